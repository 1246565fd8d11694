"""Runtime: loads engine directories and runs them with ONNX Runtime.

Light by design: onnxruntime, numpy, tokenizers and jinja2 only. Never torch or
transformers (tests/unit/test_layering.py checks this).
"""
