"""Export: model sources → engine directories (the only package that imports torch,
transformers, optimum or the TensorRT builder, and only inside the functions that need them).

Public entry points:
    export.pipeline.export_model(source, out, ExportOptions(...))
    export.pull.pull(export.pull.resolve_default(name))
"""
