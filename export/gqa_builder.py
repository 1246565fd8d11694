"""Our ONNX graph builder for llama-family decoders: GroupQueryAttention over a shared KV buffer.

Why our own builder rather than onnxruntime-genai's: see docs/architecture.md. In short,
the graph's inputs are the ones our scheduler needs (per-sequence cache lengths and a
`logits_to_keep` that skips the vocabulary projection for prompt positions nobody reads),
it builds from the PyTorch module transformers already loaded (so GGUF and HF folders take
one path and the parity reference is the very same weights), and it keeps onnxruntime-genai
(which pins the CPU onnxruntime package) out of every environment.

The graph, per layer (names as in the manifest):

    x ─ SimplifiedLayerNorm ─ MatMul(Wqkv) ─ GroupQueryAttention ─ MatMul(Wo) ─┐
    │                                   past_key_values.i.* ─┘  └─ present.i.*  │
    └──────────────── residual ───────────── SkipSimplifiedLayerNorm ◄─────────┘
                                              ─ MatMul(Wgate|Wup) ─ Split ─ SiLU·up ─ MatMul(Wdown) ─► next layer

GroupQueryAttention applies the rotary embedding itself (do_rotary, from cos/sin caches of
`max_context` rows) and, when the past and present are bound to the same memory, appends
the new keys and values in place: no Concat anywhere on the KV path.

Inputs: input_ids int64 [batch, sequence]; seqlens_k int32 [batch] (cached + new - 1 per
sequence); total_sequence_length int32 scalar (max over the batch of cached + new);
logits_to_keep int64 [1]; past_key_values.{i}.key/value float32
[batch, kv_heads, max_context, head_dim]. Outputs: logits float32 [batch, kept, vocab];
present.{i}.key/value (same shape and, bound by the runtime, same memory as the past).

GPU engines (`dtype="float16"`): ONNX Runtime's CUDA GroupQueryAttention runs fp16/bf16 only,
so the whole graph computes in fp16: weights, norms, rotary caches, the residual stream and
the KV cache are float16, quantized blocks keep fp16 scales (a GGUF's Q4_1 scales are fp16 to
begin with, so they carry over exactly), and the logits are cast to float32 at the end so the
sampler sees the same dtype on every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.quantize import QuantizedWeight, WeightQuantization, dequantize, quantize_blocks, recover_q4_1
from runtime.manifest import KVLayout, TensorSpec

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE_TYPES = (None, "default", "linear", "llama3")  # inv_freq does not depend on length
OPSET = 21
# Compute dtypes the builder writes: float32 (CPU engines) and float16 (CUDA / TensorRT engines).
DTYPES = ("float32", "float16")
IR_VERSION = 10  # what onnxruntime >= 1.20 reads
MS_DOMAIN = "com.microsoft"
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
COPY_GRAPH_FILE = "kv_copy.onnx"


@dataclass(frozen=True)
class BuiltGraph:
    """What the builder produced: tensor specs for the manifest and the KV layout."""

    graph_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kv_cache: KVLayout
    node_count: int
    # Bytes of the projection weights a decode step reads (the bandwidth bound of batch-1 decode).
    matmul_weight_bytes: int = 0
    # source-blocks quantization: matrices carried over exactly, and those rounded instead.
    carried: tuple[str, ...] = ()
    rounded: tuple[str, ...] = ()


def unsupported_reason(config: Any, max_context: int) -> str | None:
    """Why this builder cannot build `config`'s model, or None if it can."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    head_dim = _head_dim(config)
    if head_dim % 16:
        return f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention's rotary kernel needs that)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    rope = getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope scaling {rope_type!r} depends on the sequence length"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embeddings are not supported"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", model_type == "mistral") and window < max_context:
        return f"sliding-window attention ({window}) shorter than the context ({max_context})"
    return None


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


class _Graph:
    """A tiny helper around onnx.helper: nodes, initializers and unique names."""

    def __init__(self, float_type: type = np.float32) -> None:
        from onnx import helper, numpy_helper

        # Floating-point constants are stored in the graph's compute dtype.
        self.float_type = float_type
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, array: np.ndarray) -> str:
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(self.float_type, copy=False)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs: Any) -> list[str]:
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs


def build_gqa_graph(
    model: Any, max_context: int, out_dir: Path, quant: WeightQuantization | None = None, dtype: str = "float32"
) -> BuiltGraph:
    """Write model.onnx (+ model.onnx.data) for the llama-family `model` into `out_dir`.

    With `quant`, every projection becomes a MatMulNBits over block-quantized weights
    (export/quantize.py); the vocabulary projection follows `quant.lm_head`. `dtype` is the
    compute dtype of activations, float weights and the KV cache (float16 for GPU engines).
    """
    import onnx
    import torch

    config = model.config
    reason = unsupported_reason(config, max_context)
    if reason:
        raise ValueError(reason)
    if dtype not in DTYPES:
        raise ValueError(f"compute dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    float_type = np.float16 if dtype == "float16" else np.float32
    layers = config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = _head_dim(config)
    vocab, eps = config.vocab_size, float(config.rms_norm_eps)
    weights = {name: tensor.detach().to(torch.float32).cpu().numpy() for name, tensor in model.state_dict().items()}
    g = _Graph(float_type)
    f32 = onnx.TensorProto.FLOAT
    weight_bytes = 0

    carried: list[str] = []
    rounded: list[str] = []
    block_sums: dict[str, str] = {}

    def matmul(x: str, w: np.ndarray, weight_name: str, node_name: str, q: WeightQuantization | None = quant) -> str:
        """x @ w, with w [in, out] stored in fp32 or block-quantized for MatMulNBits."""
        nonlocal weight_bytes
        out = f"{node_name}/out"
        if q is None:
            weight_bytes += w.size * np.dtype(float_type).itemsize
            return g.node("MatMul", [x, g.const(weight_name, w)], [out], node_name)[0]
        exact = recover_q4_1(w, q.block_size) if q.method == "source-blocks" and q.bits == 4 else None
        qw = exact[0] if exact is not None else quantize_blocks(w, q.bits, q.block_size, q.symmetric)
        if q.method == "source-blocks":
            # Q8_0 blocks (GGUF's usual embedding type) come back exactly from symmetric int8 blocks of 32.
            lossless = exact is not None or _lossless(qw, w)
            (carried if lossless else rounded).append(weight_name)
        weight_bytes += qw.nbytes - (qw.scales.nbytes - qw.scales.size * np.dtype(float_type).itemsize)
        y = nbits(x, qw, weight_name, f"{node_name}/nbits" if exact is not None else node_name, q.accuracy_level)
        if exact is None:
            return y
        # The blocks' offsets: per-block sums of x (shared by every matrix reading x) @ offsets.
        offsets = exact[1]
        weight_bytes += offsets.size * np.dtype(float_type).itemsize
        if x not in block_sums:
            shape = g.const(f"{x}/block_shape", np.array([0, 0, -1, q.block_size], dtype=np.int64))
            blocked = g.node("Reshape", [x, shape], [f"{x}/blocked"], f"{x}/block_reshape")[0]
            axes = g.const(f"{x}/block_axes", np.array([-1], dtype=np.int64))
            block_sums[x] = g.node("ReduceSum", [blocked, axes], [f"{x}/block_sums"], f"{x}/block_sums", keepdims=0)[0]
        shift = g.node("MatMul", [block_sums[x], g.const(f"{weight_name}.offsets", offsets)], [f"{node_name}/shift"], f"{node_name}/offsets")[0]
        return g.node("Add", [y, shift], [out], f"{node_name}/add_offsets")[0]

    def nbits(x: str, qw: QuantizedWeight, weight_name: str, node_name: str, accuracy_level: int) -> str:
        inputs = [x, g.const(f"{weight_name}.quant", qw.packed), g.const(f"{weight_name}.scales", qw.scales)]
        if qw.zero_points is not None:
            inputs.append(g.const(f"{weight_name}.zero_points", qw.zero_points))
        return g.node(
            "MatMulNBits", inputs, [f"{node_name}/out"], node_name, MS_DOMAIN,
            K=qw.k, N=qw.n, bits=qw.bits, block_size=qw.block_size, accuracy_level=accuracy_level,
        )[0]  # fmt: skip

    def linear_t(prefix: str) -> np.ndarray:
        return weights[f"{prefix}.weight"].T  # HF stores [out, in]; MatMul wants [in, out]

    def maybe_bias(x: str, name: str, bias_names: list[str]) -> str:
        present = [weights.get(b) for b in bias_names]
        if all(b is None for b in present):
            return x
        parts = [p if p is not None else np.zeros_like(next(b for b in present if b is not None)) for p in present]
        return g.node("Add", [x, g.const(f"{name}.bias", np.concatenate(parts))], [f"{name}/biased"], f"{name}/add_bias")[0]

    # Rotary caches: cos/sin of position × inverse frequency, from the module transformers built.
    inv_freq, scaling = _rotary_parameters(model)
    angles = np.outer(np.arange(max_context, dtype=np.float64), inv_freq.astype(np.float64))
    cos_cache = g.const("rotary.cos_cache", (np.cos(angles) * scaling).astype(np.float32))
    sin_cache = g.const("rotary.sin_cache", (np.sin(angles) * scaling).astype(np.float32))

    head_quant = quant.head() if quant is not None else None
    # An fp32 head reads the fp32 table (tied weights: one copy), so only a quantized head lets it go.
    carry_rows = head_quant is not None and head_quant.method == "source-blocks"
    blocks = _lossless_int8_rows(weights["model.embed_tokens.weight"]) if carry_rows else None
    embed = ""
    if blocks is None:
        embed = g.const("model.embed_tokens.weight", weights["model.embed_tokens.weight"])
        x = g.node("Gather", [embed, "input_ids"], ["embeddings"], "embed_tokens")[0]
    else:
        # The GGUF's embedding is Q8_0: gather its int8 rows and scales and de-quantize only the
        # rows looked up, instead of holding the whole table in fp32 (113 MB for SmolLM2, most of
        # it resident after a few hundred distinct tokens). Exact: the rows are the same floats.
        rows, scales = blocks
        carried.append("model.embed_tokens.weight")
        x = g.node(
            "GatherBlockQuantized",
            [g.const("model.embed_tokens.quant", rows), "input_ids", g.const("model.embed_tokens.scales", scales)],
            ["embeddings"], "embed_tokens", MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=32, bits=8,
        )[0]  # fmt: skip
    residual = x
    pending: str | None = None  # output of the previous block still to be added to the residual
    for i in range(layers):
        p = f"model.layers.{i}"
        # Pre-attention norm (fused with the previous MLP's residual add after layer 0).
        ln = g.const(f"{p}.input_layernorm.weight", weights[f"{p}.input_layernorm.weight"])
        if pending is None:
            normed = g.node("SimplifiedLayerNormalization", [x, ln], [f"{p}/ln1"], f"{p}/input_layernorm", axis=-1, epsilon=eps)[0]
        else:
            normed, _, _, residual = g.node(
                "SkipSimplifiedLayerNormalization", [pending, residual, ln],
                [f"{p}/ln1", "", "", f"{p}/residual1"], f"{p}/input_layernorm", MS_DOMAIN, epsilon=eps,
            )  # fmt: skip
        # Fused q|k|v projection, then attention with the rotary embedding and the KV cache.
        a = f"{p}.self_attn"
        wqkv = np.concatenate([linear_t(f"{a}.q_proj"), linear_t(f"{a}.k_proj"), linear_t(f"{a}.v_proj")], axis=1)
        qkv = matmul(normed, wqkv, f"{a}.qkv_proj.weight", f"{p}/qkv_proj")
        qkv = maybe_bias(qkv, f"{a}.qkv_proj", [f"{a}.q_proj.bias", f"{a}.k_proj.bias", f"{a}.v_proj.bias"])
        attn = g.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k", "total_sequence_length", cos_cache, sin_cache],
            [f"{p}/attn", f"present.{i}.key", f"present.{i}.value"],
            f"{p}/attention", MS_DOMAIN,
            num_heads=heads, kv_num_heads=kv_heads, scale=float(head_dim**-0.5), do_rotary=1, rotary_interleaved=0,
        )[0]  # fmt: skip
        o = matmul(attn, linear_t(f"{a}.o_proj"), f"{a}.o_proj.weight", f"{p}/o_proj")
        o = maybe_bias(o, f"{a}.o_proj", [f"{a}.o_proj.bias"])
        # Post-attention norm fused with the residual add.
        ln2 = g.const(f"{p}.post_attention_layernorm.weight", weights[f"{p}.post_attention_layernorm.weight"])
        normed2, _, _, residual = g.node(
            "SkipSimplifiedLayerNormalization", [o, residual, ln2],
            [f"{p}/ln2", "", "", f"{p}/residual2"], f"{p}/post_attention_layernorm", MS_DOMAIN, epsilon=eps,
        )  # fmt: skip
        # SwiGLU MLP with gate and up fused into one MatMul.
        m = f"{p}.mlp"
        inter = weights[f"{m}.gate_proj.weight"].shape[0]
        wgu = np.concatenate([linear_t(f"{m}.gate_proj"), linear_t(f"{m}.up_proj")], axis=1)
        gu = matmul(normed2, wgu, f"{m}.gate_up_proj.weight", f"{p}/gate_up_proj")
        gu = maybe_bias(gu, f"{m}.gate_up_proj", [f"{m}.gate_proj.bias", f"{m}.up_proj.bias"])
        split = g.const(f"{m}.split", np.array([inter, inter], dtype=np.int64))
        gate, up = g.node("Split", [gu, split], [f"{p}/gate", f"{p}/up"], f"{p}/split", axis=-1)
        sig = g.node("Sigmoid", [gate], [f"{p}/gate_sigmoid"], f"{p}/sigmoid")[0]
        act = g.node("Mul", [gate, sig], [f"{p}/silu"], f"{p}/silu")[0]
        h = g.node("Mul", [act, up], [f"{p}/swiglu"], f"{p}/swiglu")[0]
        pending = matmul(h, linear_t(f"{m}.down_proj"), f"{m}.down_proj.weight", f"{p}/down_proj")
        pending = maybe_bias(pending, f"{m}.down_proj", [f"{m}.down_proj.bias"])

    # Final norm, keep only the positions whose logits are wanted, project onto the vocabulary.
    assert pending is not None, f"{config.model_type} with {layers} decoder layers"  # every layer leaves its MLP output pending
    norm = g.const("model.norm.weight", weights["model.norm.weight"])
    final = g.node("SkipSimplifiedLayerNormalization", [pending, residual, norm], ["final_norm"], "final_norm", MS_DOMAIN, epsilon=eps)[0]
    start = g.node("Neg", ["logits_to_keep"], ["keep_start"], "keep_start")[0]
    kept = g.node(
        "Slice", [final, start, g.const("keep_end", np.array([np.iinfo(np.int64).max])), g.const("keep_axis", np.array([1]))],
        ["kept_hidden"], "keep_last",
    )[0]  # fmt: skip
    if head_quant is None and _lm_head_is_tied(model, weights):
        # Tied weights: one copy on disk; ONNX Runtime folds the transpose once at load.
        weight_bytes += weights["model.embed_tokens.weight"].size * np.dtype(float_type).itemsize
        head = g.node("Transpose", [embed], ["lm_head.weight_t"], "lm_head_transpose", perm=[1, 0])[0]
        g.node("MatMul", [kept, head], ["logits" if dtype == "float32" else "lm_head/out"], "lm_head")
    else:
        # A quantized head is its own copy, beside the embedding's rows.
        head_weight = weights.get("lm_head.weight", weights["model.embed_tokens.weight"]).T
        logits = matmul(kept, np.ascontiguousarray(head_weight), "lm_head.weight_t", "lm_head", head_quant)
        if dtype == "float32":
            g.node("Identity", [logits], ["logits"], "logits")
    if dtype != "float32":
        # The sampler reads float32 logits from every engine: cast once, at the very end.
        g.node("Cast", [g.nodes[-1].output[0]], ["logits"], "logits", to=f32)

    kv_shape = ["batch", kv_heads, max_context, head_dim]
    inputs = [
        TensorSpec("input_ids", "token_ids", "int64", ("batch", "sequence")),
        TensorSpec("seqlens_k", "kv_seqlens", "int32", ("batch",)),
        TensorSpec("total_sequence_length", "total_length", "int32", ()),
        TensorSpec("logits_to_keep", "logits_to_keep", "int64", (1,)),
    ]
    outputs = [TensorSpec("logits", "logits", "float32", ("batch", "kept", vocab))]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(TensorSpec(f"past_key_values.{i}.{kind}", f"past_{kind}", dtype, tuple(kv_shape), i))
            outputs.append(TensorSpec(f"present.{i}.{kind}", f"present_{kind}", dtype, tuple(kv_shape), i))

    elem = {"int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32, "float32": f32, "float16": onnx.TensorProto.FLOAT16}
    graph = onnx.helper.make_graph(
        g.nodes,
        f"{config.model_type}-gqa-shared-kv",
        [onnx.helper.make_tensor_value_info(t.name, elem[t.dtype], list(t.shape)) for t in inputs],
        [onnx.helper.make_tensor_value_info(t.name, elem[t.dtype], list(t.shape)) for t in outputs],
        g.initializers,
    )
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="appliance",
        ir_version=IR_VERSION,
    )
    onnx.save_model(proto, str(out_dir / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
    write_kv_copy_graph(out_dir / COPY_GRAPH_FILE, 2 * layers, [kv_heads, max_context, head_dim], elem[dtype])
    layout = KVLayout(
        layers=layers, kv_heads=kv_heads, head_dim=head_dim, max_length=max_context, dtype=dtype, shared_buffer=True, copy_graph=COPY_GRAPH_FILE,
    )  # fmt: skip
    return BuiltGraph(GRAPH_FILE, tuple(inputs), tuple(outputs), layout, len(g.nodes), weight_bytes, tuple(carried), tuple(rounded))


def write_kv_copy_graph(path: Path, tensors: int, slot_shape: list[int], element_type: int) -> None:
    """The KV pool's slot-to-slot copy (KVLayout.copy_graph): target.i = Identity(source.i).

    The runtime binds each source at one slot of the pool and each target at another; the
    Identity kernels copy device to device (CUDA) or memory to memory (CPU).
    """
    import onnx

    h = onnx.helper
    shape: list[str | int] = ["slot_rows", *slot_shape]
    nodes = [h.make_node("Identity", [f"source.{i}"], [f"target.{i}"], name=f"copy.{i}") for i in range(tensors)]
    graph = h.make_graph(
        nodes, "kv-slot-copy",
        [h.make_tensor_value_info(f"source.{i}", element_type, shape) for i in range(tensors)],
        [h.make_tensor_value_info(f"target.{i}", element_type, shape) for i in range(tensors)],
    )  # fmt: skip
    onnx.save_model(h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="appliance", ir_version=IR_VERSION), str(path))


def _lossless(qw: QuantizedWeight, w: np.ndarray) -> bool:
    """Whether the blocks give the floats W [K, N] back to within float rounding."""
    return bool(np.allclose(dequantize(qw), w, rtol=1e-5, atol=1e-6 * float(np.abs(w).max())))


def _lossless_int8_rows(table: np.ndarray, block_size: int = 32) -> tuple[np.ndarray, np.ndarray] | None:
    """The embedding table [V, K] as uint8 rows (zero point 128) and scales [V, K/32], or None.

    None unless symmetric int8 blocks of 32 along each row (GGUF's Q8_0) give every value back
    to within float rounding: a table that was never Q8_0 keeps its fp32 rows.
    """
    vocab, k = table.shape
    if k % block_size:
        return None
    qw = quantize_blocks(np.ascontiguousarray(table.T), 8, block_size, True)
    if not _lossless(qw, table.T):
        return None
    return np.ascontiguousarray(qw.packed.reshape(vocab, k)), np.ascontiguousarray(qw.scales.reshape(vocab, k // block_size))


def _rotary_parameters(model: Any) -> tuple[np.ndarray, float]:
    """inv_freq and the attention scaling of the model's rotary embedding module."""
    rotary = model.model.rotary_emb
    return rotary.inv_freq.detach().float().cpu().numpy(), float(getattr(rotary, "attention_scaling", 1.0))


def _lm_head_is_tied(model: Any, weights: dict[str, np.ndarray]) -> bool:
    head = model.get_output_embeddings()
    if head is None or "lm_head.weight" not in weights:
        return True
    return head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
