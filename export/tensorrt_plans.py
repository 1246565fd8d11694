"""TensorRT engines: the optimization profile the manifest records, and the plans built (on the
GPU at hand) into the engine directory's cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from export.errors import BackendUnavailableError, UnsupportedModelError
from runtime.manifest import (
    Manifest,
    TensorRTSpec,
    write_manifest,
)
from runtime.session import CPU, CUDA, TENSORRT
from runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from export.gqa_builder import BuiltGraph
    from export.optimum_export import OptimumGraph
    from export.options import ExportOptions

TENSORRT_CACHE_DIR = "tensorrt"  # plan and timing caches, inside the engine directory



def tensorrt_spec(built: BuiltGraph | OptimumGraph, options: ExportOptions, graph_path: Path) -> TensorRTSpec:
    """The TensorRT section of the manifest: an optimization profile for every dynamic tensor a
    TensorRT subgraph can start from.

    TensorRT takes the standard ops; the com.microsoft ones (GroupQueryAttention, MatMulNBits,
    the fused norms, the quantized gather) go to the CUDA provider, so the graph is cut into
    TensorRT subgraphs whose inputs are graph inputs or outputs of those nodes, and ONNX
    Runtime wants a profile for each of them once any is given. Batch dimensions run from 1 to
    --max-batch (typical: 8 streams), sequence dimensions from 1 to the context (typical: one
    token, a decode step); fixed dimensions are what they are.
    """
    typical_batch = min(8, options.max_batch)
    ranges = {"batch": (1, typical_batch, options.max_batch), "sequence": (1, 1, options.max_context)}
    tensors = [(spec.name, spec.shape) for spec in built.inputs] + _contrib_outputs(graph_path)
    shapes: list[list[str]] = [[], [], []]
    for name, shape in tensors:
        if not any(isinstance(d, str) for d in shape):
            continue  # static tensors need no profile
        for i in range(3):
            dims = [str(ranges[str(d)][i]) if isinstance(d, str) else str(d) for d in shape]
            shapes[i].append(f"{name}:{'x'.join(dims)}")
    return TensorRTSpec(
        cache_dir=TENSORRT_CACHE_DIR,
        profile_min_shapes=",".join(shapes[0]),
        profile_opt_shapes=",".join(shapes[1]),
        profile_max_shapes=",".join(shapes[2]),
        max_batch=options.max_batch,
    )


def _contrib_outputs(graph_path: Path) -> list[tuple[str, tuple[int | str, ...]]]:
    """The activations [batch, sequence, width] that our builder's contrib-op nodes produce,
    with each width read from the node (the KV cache outputs are graph outputs, not listed)."""
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    head_dim = next(
        (int(i.type.tensor_type.shape.dim[3].dim_value) for i in graph.input if i.name.startswith("past_key_values.")), 0
    )  # fmt: skip
    found: list[tuple[str, tuple[int | str, ...]]] = []
    for node in graph.node:
        if node.domain != "com.microsoft" and node.op_type != "SimplifiedLayerNormalization":  # a contrib op in the ai.onnx domain
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            width, outputs = int(attrs["N"]), node.output[:1]
        elif node.op_type == "GroupQueryAttention":
            width, outputs = int(attrs["num_heads"]) * head_dim, node.output[:1]
        elif node.op_type == "SkipSimplifiedLayerNormalization":
            width, outputs = int(dims[node.input[2]][0]), [node.output[0], *node.output[3:4]]
        elif node.op_type == "SimplifiedLayerNormalization":
            width, outputs = int(dims[node.input[1]][0]), node.output[:1]
        elif node.op_type == "GatherBlockQuantized":
            width, outputs = int(dims[node.input[0]][1]) * 8 // int(attrs.get("bits", 4)), node.output[:1]
        else:
            raise UnsupportedModelError(f"no TensorRT profile rule for {node.op_type}; export with --backend onnx")
        found += [(name, ("batch", "sequence", width)) for name in outputs if name]
    return found


def build_tensorrt_plans(staging: Path, manifest: Manifest) -> Manifest:
    """Build the plan cache in the engine directory and record what it was built for.

    Creating the session with the TensorRT provider builds a plan per TensorRT subgraph over
    the manifest's profile; a prefill and a decode step run through it so that every plan is
    built and cached now, not at the first request. The TensorRT version and the GPU model go
    into the manifest: the runtime refuses the cache anywhere else (runtime.session).
    """
    from runtime.decoder import open_decoder
    from runtime.engine import load_engine
    from runtime.gpu import gpu_identity, tensorrt_version

    assert manifest.tensorrt is not None
    (staging / manifest.tensorrt.cache_dir).mkdir(exist_ok=True)
    engine = load_engine(staging, RuntimeSettings(providers=(TENSORRT, CUDA, CPU)))
    if TENSORRT not in engine.providers:
        raise BackendUnavailableError(f"ONNX Runtime did not create the TensorRT provider (it runs {', '.join(engine.providers)})")
    decoder = open_decoder(engine, slots=min(2, manifest.tensorrt.max_batch))
    decoder.prefill(0, [manifest.bos_token_id or 0] * 4)
    decoder.decode([0], [manifest.bos_token_id or 0])
    gpu = gpu_identity()
    identity = dataclasses.replace(
        manifest.tensorrt,
        tensorrt_version=tensorrt_version(),
        gpu_name=gpu.name if gpu else None,
        compute_capability=gpu.compute_capability if gpu else None,
    )
    manifest = dataclasses.replace(manifest, tensorrt=identity)
    del decoder, engine
    write_manifest(staging, manifest)  # the plans are files of the engine: hashed like the rest
    return manifest
