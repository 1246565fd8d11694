"""Does ONNX Runtime's CUDA execution provider have a kernel for every node of a graph?

Checked on machines without a GPU, from the kernel registry ONNX Runtime documents for its
CUDA provider (docs/OperatorKernels.md, "CUDAExecutionProvider", as of the 1.2x/1.3x
releases; each row was checked against the kernel type names compiled into
onnxruntime-gpu 1.31.1's CUDA library, which registers these types and some more), restricted
to the ops our builder writes, at the opsets it writes (ai.onnx 21, com.microsoft 1). A node without a CUDA kernel for its types would silently run on the CPU,
with a copy across the bus on each side of it: for a GPU engine that is a defect, and
`cuda_problems` names every such node. On a GPU machine the gpu check confirms it with a
real session (every node placed on CUDA).

Each entry lists, per type constraint that our nodes exercise, the input it binds (an index,
or "to" for Cast's target type) and the element types the CUDA kernel is registered for.
"""

from __future__ import annotations

from pathlib import Path

ORT_VERSION = "1.31.1"

_NUMERIC = ("bfloat16", "double", "float", "float16", "int16", "int32", "int64", "int8", "uint16", "uint32", "uint64", "uint8")
_ANY = (*_NUMERIC, "bool")
_FLOATS = ("bfloat16", "double", "float", "float16")

# (domain, op) -> ((input index or "to", allowed element types), ...)
CUDA_KERNELS: dict[tuple[str, str], tuple[tuple[int | str, tuple[str, ...]], ...]] = {
    ("", "Gather"): ((0, _ANY), (1, ("int32", "int64"))),
    ("", "MatMul"): ((0, _FLOATS),),
    ("", "Add"): ((0, _NUMERIC),),
    ("", "Mul"): ((0, _NUMERIC),),
    ("", "Sigmoid"): ((0, _FLOATS),),
    ("", "Split"): ((0, _ANY),),
    ("", "Neg"): ((0, ("bfloat16", "double", "float", "float16", "int16", "int32", "int64", "int8")),),
    ("", "Slice"): ((0, _ANY), (1, ("int32", "int64"))),
    ("", "Transpose"): ((0, _ANY),),
    ("", "Identity"): ((0, _ANY),),
    ("", "Reshape"): ((0, _ANY), (1, ("int64",))),
    ("", "ReduceSum"): ((0, ("bfloat16", "double", "float", "float16", "int32", "int64")),),
    ("", "Cast"): ((0, _ANY), ("to", _ANY)),
    # A contrib kernel registered in the ai.onnx domain (its com.microsoft spelling has no CUDA kernel).
    ("", "SimplifiedLayerNormalization"): ((0, _FLOATS), (1, _FLOATS)),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): ((0, ("bfloat16", "float", "float16")),),
    # fp16/bf16 only: the reason GPU engines compute in fp16 (T: query, T_CACHE: the past keys).
    ("com.microsoft", "GroupQueryAttention"): ((0, ("bfloat16", "float16")), (3, ("bfloat16", "float16", "float8e4m3fn", "int8"))),
    ("com.microsoft", "MatMulNBits"): ((0, ("bfloat16", "float", "float16")), (1, ("uint8",)), (2, ("bfloat16", "float", "float16"))),
    ("com.microsoft", "GatherBlockQuantized"): ((0, ("int4", "uint4", "uint8")), (1, ("int32", "int64")), (2, ("bfloat16", "float", "float16"))),
}

# Ops whose output type is not their first input's.
_OUTPUT_FROM = {"GatherBlockQuantized": 2}


def cuda_problems(graph_path: Path | str) -> list[str]:
    """Every node of the graph that the CUDA execution provider has no kernel for, with why."""
    import onnx
    from onnx import helper

    model = onnx.load(str(graph_path), load_external_data=False)
    graph = model.graph
    types: dict[str, str] = {}
    for value in [*graph.input, *graph.output]:
        types[value.name] = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name if value.type.tensor_type.elem_type else ""
    for init in graph.initializer:
        types[init.name] = helper.tensor_dtype_to_np_dtype(init.data_type).name
    problems = []
    for node in graph.node:
        domain = node.domain if node.domain not in ("ai.onnx",) else ""
        kernels = CUDA_KERNELS.get((domain, node.op_type))
        where = f"{node.name or node.op_type} ({domain or 'ai.onnx'}::{node.op_type})"
        inputs = [_onnx_name(types.get(name, "")) if name else "" for name in node.input]
        if kernels is None:
            problems.append(f"{where}: no CUDA kernel registered for this op in ONNX Runtime {ORT_VERSION}")
        else:
            for slot, allowed in kernels:
                if isinstance(slot, str):  # "to": Cast's target type
                    attr = next(a for a in node.attribute if a.name == slot)
                    element = _onnx_name(helper.tensor_dtype_to_np_dtype(attr.i).name)
                elif slot < len(inputs) and inputs[slot]:
                    element = inputs[slot]
                else:
                    continue
                if element not in allowed:
                    problems.append(f"{where}: the CUDA kernel takes {', '.join(allowed)} at {'the target type' if isinstance(slot, str) else f'input {slot}'}, not {element}")
        # The node's outputs carry its type on (our builder's ops keep their input's element type).
        if node.op_type == "Cast":
            out_type = helper.tensor_dtype_to_np_dtype(next(a for a in node.attribute if a.name == "to").i).name
        else:
            source = node.input[_OUTPUT_FROM.get(node.op_type, 0)] if node.input else ""
            out_type = types.get(source, "")
        for name in node.output:
            if name and name not in types:
                types[name] = out_type
    return problems


def _onnx_name(numpy_name: str) -> str:
    """numpy's dtype name as OperatorKernels.md spells the ONNX element type."""
    return {"float32": "float", "float64": "double"}.get(numpy_name, numpy_name)
