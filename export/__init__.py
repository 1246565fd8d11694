"""Export: model sources → engine directories (the only package that imports torch,
transformers, optimum or the TensorRT builder, and only inside the functions that need them).

options.py (what may be asked), sources.py and pull.py (default names, folders, GGUF files),
budget.py (memory and disk checked first), tensors.py and blocks.py (weights a tensor at a time,
GGUF blocks carried), families.py (each family's plan), gqa_builder.py and onnx_writer.py (our
graph), optimum_export.py (the fallback), quantize.py, reference.py and parity.py (validation),
tensorrt_plans.py, staging.py (all or nothing), pipeline.py (the steps in order). It may import
runtime/ (manifests, sessions for validation); never api/.

Public entry points:
    export.pipeline.export_model(source, out, ExportOptions(...))
    export.pull.pull(export.pull.resolve_default(name))
"""
