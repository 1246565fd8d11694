"""Runtime: loads engine directories and runs them with ONNX Runtime.

Light by design: it may import onnxruntime, numpy, tokenizers, jinja2 (chat templates) and
llguidance (grammars) only; never torch, transformers, export/ or api/
(tests/unit/test_layering.py).

The decode path is a straight line, each module importing only those before it:
request (GenerationRequest, fit_context) ← sequence (SequenceState, one request's progress)
← scheduler (batched steps on one thread, over the `Decoder` seam of decoder_base.py)
← generation (TextGenerator, the public entry). decoder.py opens the decoder of an engine's
graph style (shared_kv.py, concat_kv.py); settings.py holds the one copy of every setting.
"""
