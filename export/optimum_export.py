"""Exports through optimum's ONNX exporter: the decoder fallback and embedding encoders.

Decoders our GQA builder does not cover (see families.unsupported_reason) are exported
by optimum as `text-generation-with-past`: past and present key/values are separate
tensors and the present is the past concatenated with the new positions. The runtime
drives such graphs with `ConcatKVDecoder`.

Encoders (sentence embedding models) are exported as `feature-extraction`: token states
out, pooling done by the runtime as the manifest says. Cross-encoders (one-label sequence
classifiers, rerankers) are exported as `text-classification`: the logits out, the activation
applied by the runtime as the manifest says.
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from export.errors import UnsupportedModelError
from runtime.manifest import KVLayout, TensorSpec

GRAPH_FILE = "model.onnx"
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_PLAIN_ROLES = {
    "input_ids": "token_ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "token_type_ids",
    "position_ids": "position_ids",
    "logits": "logits",
    "last_hidden_state": "hidden_state",
}
_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32", "tensor(float16)": "float16"}


@dataclass(frozen=True)
class OptimumGraph:
    graph_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kv_cache: KVLayout | None
    files: tuple[str, ...]


def export_concat_decoder(model: Any, max_context: int, out_dir: Path) -> OptimumGraph:
    """Export a causal LM with optimum (text-generation-with-past) into `out_dir`."""
    from optimum.exporters.onnx import onnx_export_from_model

    staging = out_dir / "_optimum"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's tracer warnings; we validate the graph ourselves
            onnx_export_from_model(model, output=staging, task="text-generation-with-past", do_validation=False, device="cpu")
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise UnsupportedModelError(
            f"neither our GroupQueryAttention builder nor optimum's exporter supports {type(model).__name__} "
            f"(optimum: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        ) from exc
    files = _adopt_graph(staging, out_dir)
    inputs, outputs = _describe(out_dir / GRAPH_FILE)
    layers = len([t for t in inputs if t.role == "past_key"])
    if layers == 0:
        raise UnsupportedModelError(f"optimum exported {type(model).__name__} without a KV cache; it cannot be served")
    past = next(t for t in inputs if t.role == "past_key")
    kv_heads, head_dim = _static_dims(past, model)
    layout = KVLayout(layers=layers, kv_heads=kv_heads, head_dim=head_dim, max_length=max_context, dtype=past.dtype, shared_buffer=False)
    return OptimumGraph(GRAPH_FILE, inputs, outputs, layout, files)


def export_encoder(model_folder: Path, out_dir: Path) -> OptimumGraph:
    """Export a sentence encoder with optimum (feature-extraction) into `out_dir`."""
    return _export_encoder_task(model_folder, out_dir, "feature-extraction", "hidden_state")


def export_cross_encoder(model_folder: Path, out_dir: Path) -> OptimumGraph:
    """Export a cross-encoder (a sequence classifier) with optimum (text-classification) into `out_dir`."""
    return _export_encoder_task(model_folder, out_dir, "text-classification", "logits")


def _export_encoder_task(model_folder: Path, out_dir: Path, task: str, output_role: str) -> OptimumGraph:
    from optimum.exporters.onnx import main_export

    staging = out_dir / "_optimum"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(
                str(model_folder), output=staging, task=task, device="cpu",
                do_validation=False, local_files_only=True, library_name="transformers",
            )  # fmt: skip
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise UnsupportedModelError(f"{model_folder}: optimum cannot export this encoder as {task} ({str(exc).strip().splitlines()[0]})") from exc
    files = _adopt_graph(staging, out_dir)
    inputs, outputs = _describe(out_dir / GRAPH_FILE)
    if not any(t.role == output_role for t in outputs):
        wanted = {"hidden_state": "last_hidden_state", "logits": "logits"}[output_role]
        raise UnsupportedModelError(f"{model_folder}: the exported encoder has no {wanted} output")
    return OptimumGraph(GRAPH_FILE, inputs, outputs, None, files)


def _adopt_graph(staging: Path, out_dir: Path) -> tuple[str, ...]:
    """Move model.onnx (and its external data, if any) out of optimum's folder; drop the rest."""
    moved = []
    for path in sorted(staging.iterdir()):
        if path.name == GRAPH_FILE or path.name.startswith(GRAPH_FILE + "_data") or path.name.endswith(".onnx.data"):
            path.rename(out_dir / path.name)
            moved.append(path.name)
    shutil.rmtree(staging)
    if GRAPH_FILE not in moved:
        raise UnsupportedModelError(f"optimum wrote no {GRAPH_FILE}; files were: {moved}")
    return tuple(moved)


def _describe(graph_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Tensor specs with roles for every input and every output we use."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    inputs = tuple(_spec(arg, is_input=True) for arg in session.get_inputs())
    outputs = tuple(spec for spec in (_spec(arg, is_input=False, strict=False) for arg in session.get_outputs()) if spec)
    return inputs, outputs


@overload
def _spec(arg: Any, is_input: bool, strict: Literal[True] = True) -> TensorSpec: ...
@overload
def _spec(arg: Any, is_input: bool, strict: bool) -> TensorSpec | None: ...


def _spec(arg: Any, is_input: bool, strict: bool = True) -> TensorSpec | None:
    """The spec of a graph argument; an unknown one raises if `strict`, else is None."""
    shape = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
    dtype = _DTYPES.get(arg.type, arg.type)
    match = (_PAST if is_input else _PRESENT).match(arg.name)
    if match:
        prefix = "past" if is_input else "present"
        return TensorSpec(arg.name, f"{prefix}_{match.group(2)}", dtype, shape, int(match.group(1)))
    if arg.name in _PLAIN_ROLES:
        return TensorSpec(arg.name, _PLAIN_ROLES[arg.name], dtype, shape)
    if strict:
        raise UnsupportedModelError(f"the exported graph has an input {arg.name!r} the runtime does not know how to feed")
    return None


def _static_dims(past: TensorSpec, model: Any) -> tuple[int, int]:
    """kv heads and head dim of a [batch, heads, length, head_dim] past tensor."""
    heads, head_dim = past.shape[1], past.shape[3]
    if isinstance(heads, int) and isinstance(head_dim, int):
        return heads, head_dim
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return int(heads), int(config.hidden_size // config.num_attention_heads)
