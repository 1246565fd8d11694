"""Our ONNX graph builder for llama-family decoders: GroupQueryAttention over a shared KV buffer.

Why our own builder rather than onnxruntime-genai's: see docs/architecture.md. In short,
the graph's inputs are the ones our scheduler needs (per-sequence cache lengths and a
`logits_to_keep` that skips the vocabulary projection for prompt positions nobody reads),
it reads the weights a tensor at a time from a tensor source (export/tensors.py: a GGUF
through a memory map, or a folder's safetensors, so GGUF and HF folders take one path and the
export's memory is bounded by a layer, not the model), writing each initializer straight into
model.onnx.data, and it keeps onnxruntime-genai (which pins the CPU onnxruntime package) out
of every environment. A GGUF's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K blocks are carried
over exactly, the same integers and scales (export/blocks.py: 4-bit or 8-bit MatMulNBits, a
minimum as per-block offsets); q|k|v or gate|up of different types are projected apart.

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
the KV cache are float16, quantized blocks keep fp16 scales (a GGUF's d of Q4_*/Q5_*/Q8_0 is
fp16 to begin with, so it carries over exactly; the K-quants' d·sc and the offsets of the types
with a minimum are rounded to fp16), and the logits are cast to float32 at the end so the
sampler sees the same dtype on every engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.blocks import CarriedBlocks, carry, stack
from export.blocks import offsets as block_offsets
from export.families import config_head_dim, family_plan, rotary_tables, unsupported_reason
from export.onnx_writer import COPY_GRAPH_FILE, DATA_FILE, GRAPH_FILE, IR_VERSION, MS_DOMAIN, OPSET, GraphWriter, write_kv_copy_graph
from export.quantize import QuantizedWeight, WeightQuantization, dequantize, quantize_blocks, quantize_matrix, recover_q4_1
from export.tensors import TensorSource
from runtime.manifest import KVLayout, TensorSpec

# Compute dtypes the builder writes: float32 (CPU engines) and float16 (CUDA / TensorRT engines).
DTYPES = ("float32", "float16")


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


def build_gqa_graph(
    config: Any,
    tensors: TensorSource,
    max_context: int,
    out_dir: Path,
    quant: WeightQuantization | None = None,
    dtype: str = "float32",
    on_layer: Callable[[int], None] = lambda layer: None,
) -> BuiltGraph:
    """Write model.onnx (+ model.onnx.data) for the llama-family model whose weights `tensors`
    holds into `out_dir`, a layer at a time (`on_layer` is told each one done).

    The family's features come from its config (family_plan; its rotary embeddings from
    rotary_tables, as transformers computes them). With `quant`,
    every projection becomes a MatMulNBits over block-quantized weights (export/quantize.py),
    GGUF blocks carried as stored where `quant.method` is source-blocks (export/blocks.py);
    the vocabulary projection follows `quant.lm_head`. `dtype` is the compute dtype of
    activations, float weights and the KV cache (float16 for GPU engines).
    """
    import onnx

    reason = unsupported_reason(config, max_context)
    if reason:
        raise ValueError(reason)
    if dtype not in DTYPES:
        raise ValueError(f"compute dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    float_type = np.float16 if dtype == "float16" else np.float32
    layers = config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config_head_dim(config)
    vocab, eps = config.vocab_size, float(config.rms_norm_eps)
    names = tensors.names()
    g = GraphWriter(out_dir / DATA_FILE, float_type)
    f32 = onnx.TensorProto.FLOAT
    weight_bytes = 0

    carried: list[str] = []
    rounded: list[str] = []
    block_sums: dict[tuple[str, int], str] = {}
    item = np.dtype(float_type).itemsize

    def sums_of_blocks(x: str, block_size: int) -> str:
        """Per-block sums of x, shared by every matrix reading x in blocks of `block_size` (the offsets' input)."""
        if (x, block_size) not in block_sums:
            at = x if block_size == 32 else f"{x}/{block_size}"
            shape = g.const(f"{at}/block_shape", np.array([0, 0, -1, block_size], dtype=np.int64))
            blocked = g.node("Reshape", [x, shape], [f"{at}/blocked"], f"{at}/block_reshape")[0]
            axes = g.const(f"{at}/block_axes", np.array([-1], dtype=np.int64))
            block_sums[(x, block_size)] = g.node("ReduceSum", [blocked, axes], [f"{at}/block_sums"], f"{at}/block_sums", keepdims=0)[0]
        return block_sums[(x, block_size)]

    def add_offsets(x: str, y: str, offsets: str, weight_name: str, node_name: str, block_size: int) -> str:
        shift = g.node("MatMul", [sums_of_blocks(x, block_size), offsets], [f"{node_name}/shift"], f"{node_name}/offsets")[0]
        return g.node("Add", [y, shift], [f"{node_name}/out"], f"{node_name}/add_offsets")[0]

    def source_blocks(parts: list[str]) -> list[CarriedBlocks | None]:
        """Each part's blocks as export/blocks.py carries them, None for a part stored as floats or in a type not carried."""
        raws = [tensors.blocks(p) for p in parts]
        return [carry(r) if r is not None else None for r in raws]

    def matmul(
        x: str, parts: list[str], weight_name: str, node_name: str, q: WeightQuantization | None = quant,
        found: list[CarriedBlocks | None] | None = None,
    ) -> str:  # fmt: skip
        """x @ W, W the HF weights `parts` ([out, in] each) stacked along out, stored in the compute
        dtype, as the source's own blocks (`found`: already read), or block-quantized for MatMulNBits."""
        nonlocal weight_bytes
        out = f"{node_name}/out"
        if q is not None and q.method == "source-blocks":
            # Every carried type is carried whatever the engine's bits: Q5_*/Q6_K/Q8_0 as 8-bit blocks.
            found = source_blocks(parts) if found is None else found
            whole = [c for c in found if c is not None]
            stacked = stack(whole) if len(whole) == len(parts) else None
            if stacked is not None:
                carried.append(weight_name)
                return carried_matmul(x, stacked, weight_name, node_name, q.accuracy_level)
        w = np.concatenate([tensors.float(p).T for p in parts], axis=1) if len(parts) > 1 else tensors.float(parts[0]).T
        if q is None:
            weight_bytes += w.size * item
            return g.node("MatMul", [x, g.const(weight_name, w)], [out], node_name)[0]
        exact = recover_q4_1(w, q.block_size) if q.method == "source-blocks" and q.bits == 4 else None
        qw, offsets = exact if exact is not None else quantize_matrix(w, q)  # offsets: per-block float zero points
        if q.method == "source-blocks":
            # Q8_0 blocks (GGUF's usual embedding type) come back exactly from symmetric int8 blocks of 32.
            lossless = exact is not None or _lossless(qw, w)
            (carried if lossless else rounded).append(weight_name)
        del w
        weight_bytes += qw.nbytes - (qw.scales.nbytes - qw.scales.size * item)
        y = nbits(x, qw, weight_name, f"{node_name}/nbits" if offsets is not None else node_name, q.accuracy_level)
        if offsets is None:
            return y
        weight_bytes += offsets.size * item
        return add_offsets(x, y, g.const(f"{weight_name}.offsets", offsets), weight_name, node_name, q.block_size)

    def project(x: str, parts: list[str], weight_name: str, node_name: str) -> list[str]:
        """x @ W for matrices `parts` that share their input (q|k|v, gate|up): one fused output for
        them all (their outputs side by side), or one output per part where they cannot be fused
        (callers split a fused output themselves when they need the parts apart): a GGUF whose
        parts are of different block types (Q4_K_M: v in Q6_K beside q and k in Q4_K) carries each
        as its own MatMulNBits (each type has its own bits and block size)."""
        if len(parts) > 1 and quant is not None and quant.method == "source-blocks":
            found = source_blocks(parts)
            if len({c.kind if c is not None else None for c in found}) > 1:
                return [matmul(x, [p], p, f"{node_name}/{p.split('.')[-2]}", found=[c]) for p, c in zip(parts, found)]
            return [matmul(x, parts, weight_name, node_name, found=found)]
        return [matmul(x, parts, weight_name, node_name)]

    def carried_bytes(blocks: CarriedBlocks) -> int:
        """What a decode step reads of carried blocks: the scales (and offsets) in the compute dtype."""
        zero_points = blocks.zero_points
        extra = (0 if blocks.minimums is None else blocks.minimums.size * item) + (0 if zero_points is None else zero_points.nbytes)
        return blocks.packed.nbytes + blocks.scales.size * item + extra

    def carried_scales(name: str, blocks: CarriedBlocks, scales: np.ndarray) -> str:
        """The scales in the compute dtype: the file's fp16 d as stored (a Cast folded at load), the
        K-quants' d·sc as fp32 values (exact; fp16 engines round them to fp16)."""
        return g.as_compute(name, scales) if blocks.scales.dtype == np.float16 else g.const(name, scales)

    def carried_offsets(name: str, blocks: CarriedBlocks, transpose: bool) -> str:
        """The blocks' offsets t = minimum + centre·scale (export/blocks.py), exact fp32 values, in the
        compute dtype (fp16 engines round them), as [blocks, N] (`transpose`, the offsets MatMul's B)
        or [N, blocks]. fp16 d and m stay as stored and the graph adds them in fp32 (folded at load):
        d is read from `{name}.scales_f16`, which carried_scales stored."""
        assert blocks.minimums is not None
        if blocks.minimums.dtype != np.float16:
            values = block_offsets(blocks)
            assert values is not None
            return g.const(f"{name}.offsets", values.T if transpose else values)
        minimums = g.const(f"{name}.minimums_f16", blocks.minimums, keep_dtype=True)
        t = g.node("Cast", [minimums], [f"{name}.minimums_f32"], f"{name}.minimums_f32", to=f32)[0]
        if blocks.centre:
            d32 = g.node("Cast", [f"{name}.scales_f16"], [f"{name}.scales_f32"], f"{name}.scales_f32", to=f32)[0]
            grid = g.const(f"{name}.block_grid", np.array(blocks.scales.shape, dtype=np.int64))
            d32 = g.node("Reshape", [d32, grid], [f"{name}.scales_grid"], f"{name}.scales_grid")[0]
            centre = g.const(f"{name}.centre", np.array(float(blocks.centre), dtype=np.float32), keep_dtype=True)
            shifted = g.node("Mul", [d32, centre], [f"{name}.centred_scales"], f"{name}.centred_scales")[0]
            t = g.node("Add", [t, shifted], [f"{name}.offsets_nb"], f"{name}.offsets_nb")[0]
        if transpose:
            t = g.node("Transpose", [t], [f"{name}.offsets_f32"], f"{name}.offsets_t", perm=[1, 0])[0]
        if float_type == np.float16:
            t = g.node("Cast", [t], [f"{name}.offsets"], f"{name}.offsets_cast", to=onnx.TensorProto.FLOAT16)[0]
        return t

    def carried_matmul(x: str, blocks: CarriedBlocks, weight_name: str, node_name: str, accuracy_level: int) -> str:
        """MatMulNBits over a GGUF's own blocks (export/blocks.py), plus the offsets of the types with a minimum."""
        nonlocal weight_bytes
        weight_bytes += carried_bytes(blocks)
        # [N × blocks], MatMulNBits' usual layout.
        inputs = [x, g.const(f"{weight_name}.quant", blocks.packed), carried_scales(f"{weight_name}.scales", blocks, blocks.scales.reshape(-1))]
        zero_points = blocks.zero_points
        if zero_points is not None:
            inputs.append(g.const(f"{weight_name}.zero_points", zero_points))
        y = g.node(
            "MatMulNBits", inputs, [f"{node_name}/nbits/out" if blocks.minimums is not None else f"{node_name}/out"],
            f"{node_name}/nbits" if blocks.minimums is not None else node_name, MS_DOMAIN,
            K=blocks.k, N=blocks.n, bits=blocks.bits, block_size=blocks.block_size, accuracy_level=accuracy_level,
        )[0]  # fmt: skip
        if blocks.minimums is None:
            return y
        return add_offsets(x, y, carried_offsets(weight_name, blocks, transpose=True), weight_name, node_name, blocks.block_size)

    def nbits(x: str, qw: QuantizedWeight, weight_name: str, node_name: str, accuracy_level: int) -> str:
        inputs = [x, g.const(f"{weight_name}.quant", qw.packed), g.const(f"{weight_name}.scales", qw.scales)]
        if qw.zero_points is not None:
            inputs.append(g.const(f"{weight_name}.zero_points", qw.zero_points))
        return g.node(
            "MatMulNBits", inputs, [f"{node_name}/out"], node_name, MS_DOMAIN,
            K=qw.k, N=qw.n, bits=qw.bits, block_size=qw.block_size, accuracy_level=accuracy_level,
        )[0]  # fmt: skip

    def maybe_bias(x: str, name: str, bias_names: list[str]) -> str:
        present = [tensors.float(b) if b in names else None for b in bias_names]
        if all(b is None for b in present):
            return x
        parts = [p if p is not None else np.zeros_like(next(b for b in present if b is not None)) for p in present]
        return g.node("Add", [x, g.const(f"{name}.bias", np.concatenate(parts))], [f"{name}/biased"], f"{name}/add_bias")[0]

    def head_norm(x: str, weight_name: str, count: int, name: str) -> str:
        """RMSNorm of each of `count` heads of x [batch, sequence, count × head_dim]."""
        heads_shape = g.const(f"{name}/heads_shape", np.array([0, 0, count, head_dim], dtype=np.int64))
        flat_shape = g.const(f"{name}/flat_shape", np.array([0, 0, count * head_dim], dtype=np.int64))
        split = g.node("Reshape", [x, heads_shape], [f"{name}/heads"], f"{name}/to_heads")[0]
        weight = norm_weight(weight_name)
        normed = g.node("SimplifiedLayerNormalization", [split, weight], [f"{name}/normed"], name, axis=-1, epsilon=eps)[0]
        return g.node("Reshape", [normed, flat_shape], [f"{name}/out"], f"{name}/to_flat")[0]

    # Rotary caches: cos/sin of position × inverse frequency, from the model's rotary embedding(s).
    plan = family_plan(config)
    long_from = plan.long_rope_from if 0 < plan.long_rope_from < max_context else 0
    caches: dict[str, list[str]] = {}
    for key, (cos, sin) in rotary_tables(config, max_context).items():
        suffix = "" if key == "global" else f".{key}"
        caches[key] = [g.const(f"rotary{suffix}.cos_cache", cos), g.const(f"rotary{suffix}.sin_cache", sin)]
    position_ids = long_rope_positions(g, max_context, long_from) if long_from else None

    head_quant = quant.head() if quant is not None else None
    tied = _lm_head_is_tied(config, names)
    # An fp32 head reads the fp32 table (tied weights: one copy), so only a quantized head lets it go.
    carry_rows = head_quant is not None and head_quant.method == "source-blocks"
    embed_raw = tensors.blocks("model.embed_tokens.weight") if carry_rows else None
    embed_blocks = carry(embed_raw) if embed_raw is not None else None
    rows: tuple[np.ndarray, np.ndarray] | None = None
    if carry_rows and embed_blocks is None:
        rows = _lossless_int8_rows(tensors.float("model.embed_tokens.weight"))
    embed = embed_scales = ""
    embed_zero_points = embed_offsets = ""
    if embed_blocks is not None:
        # The GGUF's embedding, its own bytes (any carried type, export/blocks.py): the lookup
        # gathers quantized rows and de-quantizes only the rows looked up, s·(b − z); the types
        # with a minimum add their offsets t gathered beside them (GatherBlockQuantized has no
        # float zero point), fl(s·(b − z) + t) as the file's. A tied head reads the same table.
        carried.append("model.embed_tokens.weight")
        table = g.const("model.embed_tokens.quant", embed_blocks.packed.reshape(vocab, -1))
        embed_scales = carried_scales("model.embed_tokens.scales", embed_blocks, embed_blocks.scales)
        gather_inputs = [table, "input_ids", embed_scales]
        zero_points = embed_blocks.zero_points
        if zero_points is not None:
            embed_zero_points = g.const("model.embed_tokens.zero_points", zero_points.reshape(vocab, -1))
            gather_inputs.append(embed_zero_points)
        x = g.node(
            "GatherBlockQuantized", gather_inputs, ["embed_tokens/values" if embed_blocks.minimums is not None else "embeddings"],
            "embed_tokens", MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=embed_blocks.block_size, bits=embed_blocks.bits,
        )[0]  # fmt: skip
        if embed_blocks.minimums is not None:
            embed_offsets = carried_offsets("model.embed_tokens", embed_blocks, transpose=False)  # [V, blocks]
            t = g.node("Gather", [embed_offsets, "input_ids"], ["embed_tokens/offsets/out"], "embed_tokens/offsets", axis=0)[0]
            t = g.node("Unsqueeze", [t, g.const("embed_tokens/last_axis", np.array([-1], dtype=np.int64))], ["embed_tokens/t"], "embed_tokens/t")[0]
            blocked_shape = g.const("embed_tokens/blocked_shape", np.array([0, 0, -1, embed_blocks.block_size], dtype=np.int64))
            blocked = g.node("Reshape", [x, blocked_shape], ["embed_tokens/blocked"], "embed_tokens/blocked")[0]
            x = g.node("Add", [blocked, t], ["embed_tokens/sum"], "embed_tokens/add_offsets")[0]
            flat_shape = g.const("embed_tokens/flat_shape", np.array([0, 0, -1], dtype=np.int64))
            x = g.node("Reshape", [x, flat_shape], ["embeddings"], "embed_tokens/flat")[0]
    elif rows is None:
        embed = g.const("model.embed_tokens.weight", tensors.float("model.embed_tokens.weight"))
        x = g.node("Gather", [embed, "input_ids"], ["embeddings"], "embed_tokens")[0]
    else:
        # The embedding's values are Q8_0 blocks (de-quantized by the source): gather its int8
        # rows and scales instead of holding the whole table in fp32. Exact: the same floats.
        carried.append("model.embed_tokens.weight")
        x = g.node(
            "GatherBlockQuantized",
            [g.const("model.embed_tokens.quant", rows[0]), "input_ids", g.const("model.embed_tokens.scales", rows[1])],
            ["embeddings"], "embed_tokens", MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=32, bits=8,
        )[0]  # fmt: skip
        del rows

    def norm_weight(name: str) -> str:
        """A norm's weight, Gemma's `1 + w` folded in (in fp32, as transformers computes it)."""
        weight = tensors.float(name)
        return g.const(name, weight + np.float32(plan.norm_offset) if plan.norm_offset else weight)

    def scaled(x: str, factor: float, name: str) -> str:
        if factor == 1.0:
            return x
        return g.node("Mul", [x, g.const(f"{name}/factor", np.array(factor, dtype=np.float32))], [f"{name}/out"], name)[0]

    def enter(pending: str | None, residual: str, weight: str | None, name: str, out: str, summed: str) -> tuple[str, str]:
        """Add the previous sublayer's output to the residual stream and normalize for the next
        (one fused node); without a norm before the sublayer (OLMo 2) the sum itself goes in.
        Returns (the sublayer's input `out`, the residual stream `summed`)."""
        if pending is None:
            if weight is None:
                return residual, residual
            normed = g.node("SimplifiedLayerNormalization", [residual, norm_weight(weight)], [out], name, axis=-1, epsilon=eps)[0]
            return normed, residual
        if weight is None:
            total = g.node("Add", [pending, residual], [summed], f"{name}/residual_add")[0]
            return total, total
        outputs = [out, "", "", summed] if summed else [out]  # the final norm's sum is not needed
        normed, *rest = g.node("SkipSimplifiedLayerNormalization", [pending, residual, norm_weight(weight)], outputs, name, MS_DOMAIN, epsilon=eps)
        return normed, rest[-1] if rest else normed

    def leave(y: str, weight: str | None, name: str) -> str:
        """A sublayer's output, scaled (Granite) and normalized after the sublayer (Gemma, OLMo 2)."""
        y = scaled(y, plan.residual_multiplier, f"{name}_residual_multiplier")
        if weight is None:
            return y
        return g.node("SimplifiedLayerNormalization", [y, norm_weight(weight)], [f"{name}_norm/out"], f"{name}_norm", axis=-1, epsilon=eps)[0]

    def projected(x: str, parts: list[str], fused: str, node_name: str) -> list[str]:
        """x projected onto `parts` ([out, in] each, or one checkpoint matrix already fused, as
        Phi-3 stores q|k|v and gate|up) with their biases: one output of all parts side by side
        (`fused` names its weight), or one output per part (project())."""
        outputs = project(x, parts, fused, node_name)
        biases = [f"{p.removesuffix('.weight')}.bias" for p in parts]
        if len(outputs) == 1:
            return [maybe_bias(outputs[0], fused.removesuffix(".weight"), biases)]
        return [maybe_bias(y, part.removesuffix(".weight"), [bias]) for y, part, bias in zip(outputs, parts, biases)]

    def apart(outputs: list[str], sizes: list[int], names_out: list[str], sizes_name: str, node_name: str) -> list[str]:
        """The parts of a fused projection as separate tensors (Split), or as they came."""
        if len(outputs) == len(sizes):
            return outputs
        split = g.const(sizes_name, np.array(sizes, dtype=np.int64))
        return g.node("Split", [outputs[0], split], names_out, node_name, axis=-1)

    def qk_norm(x: str, weight_name: str, count: int, name: str) -> str:
        """Qwen3 and Gemma 3 normalize each head (weight [head_dim]); OLMo 2 the whole projection."""
        if tensors.float(weight_name).shape[-1] == head_dim:
            return head_norm(x, weight_name, count, name)
        return g.node("SimplifiedLayerNormalization", [x, norm_weight(weight_name)], [f"{name}/out"], name, axis=-1, epsilon=eps)[0]

    x = scaled(x, plan.embedding_scale, "embedding_scale")
    residual = x
    pending: str | None = None  # output of the previous sublayer still to be added to the residual
    q_size, kv_size, inter = heads * head_dim, kv_heads * head_dim, int(config.intermediate_size)
    for i in range(layers):
        p, layer = f"model.layers.{i}", plan.layers[i]
        a, m = f"{p}.self_attn", f"{p}.mlp"
        h, residual = enter(pending, residual, layer.norms[0], f"{p}/input_layernorm", f"{p}/ln1", f"{p}/residual1")
        # q|k|v projected together (one MatMul where the weights allow), then attention with the
        # rotary embedding and the KV cache.
        qkv_parts = [f"{a}.qkv_proj.weight"] if f"{a}.qkv_proj.weight" in names else [f"{a}.{n}_proj.weight" for n in "qkv"]
        qkv = projected(h, qkv_parts, f"{a}.qkv_proj.weight", f"{p}/qkv_proj")
        if f"{a}.q_norm.weight" in names:
            # q/k norms: the CPU kernel takes no norm weights (../shared/FAMILIES.md), so they are
            # ordinary norms before the node, which then gets q, k, v apart.
            q, k, v = apart(qkv, [q_size, kv_size, kv_size], [f"{p}/q", f"{p}/k", f"{p}/v"], f"{a}.qkv_sizes", f"{p}/qkv_split")
            qkv = [qk_norm(q, f"{a}.q_norm.weight", heads, f"{p}/q_norm"), qk_norm(k, f"{a}.k_norm.weight", kv_heads, f"{p}/k_norm"), v]
        qkv_inputs = qkv if len(qkv) == 3 else [qkv[0], "", ""]  # packed q|k|v: the node splits it
        rotary_inputs = [*caches[layer.rotary], *([position_ids] if position_ids else [])] if layer.rotary else []
        attn = g.node(
            "GroupQueryAttention",
            [*qkv_inputs, f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k", "total_sequence_length", *rotary_inputs],
            [f"{p}/attn", f"present.{i}.key", f"present.{i}.value"],
            f"{p}/attention", MS_DOMAIN,
            num_heads=heads, kv_num_heads=kv_heads, scale=plan.attention_scale, do_rotary=int(layer.rotary is not None), rotary_interleaved=0,
            **({"local_window_size": layer.window} if 0 < layer.window < max_context else {}),
            **({"softcap": plan.attention_softcap} if plan.attention_softcap else {}),
        )[0]  # fmt: skip
        o = projected(attn, [f"{a}.o_proj.weight"], f"{a}.o_proj.weight", f"{p}/o_proj")[0]
        pending = leave(o, layer.norms[1], f"{p}/attention_out")
        # Gated MLP (SwiGLU, or Gemma's GELU-tanh gate), gate and up in one MatMul where the weights allow.
        h, residual = enter(pending, residual, layer.norms[2], f"{p}/post_attention_layernorm", f"{p}/ln2", f"{p}/residual2")
        gu_parts = [f"{m}.gate_up_proj.weight"] if f"{m}.gate_up_proj.weight" in names else [f"{m}.gate_proj.weight", f"{m}.up_proj.weight"]
        gu = projected(h, gu_parts, f"{m}.gate_up_proj.weight", f"{p}/gate_up_proj")
        gate, up = apart(gu, [inter, inter], [f"{p}/gate", f"{p}/up"], f"{m}.split", f"{p}/split")
        if plan.activation == "gelu_tanh":
            act = g.node("Gelu", [gate], [f"{p}/gelu"], f"{p}/gelu", approximate="tanh")[0]
        else:
            sig = g.node("Sigmoid", [gate], [f"{p}/gate_sigmoid"], f"{p}/sigmoid")[0]
            act = g.node("Mul", [gate, sig], [f"{p}/silu"], f"{p}/silu")[0]
        gated = g.node("Mul", [act, up], [f"{p}/swiglu"], f"{p}/swiglu")[0]
        down = projected(gated, [f"{m}.down_proj.weight"], f"{m}.down_proj.weight", f"{p}/down_proj")[0]
        pending = leave(down, layer.norms[3], f"{p}/mlp_out")
        on_layer(i)

    # Final norm, keep only the positions whose logits are wanted, project onto the vocabulary.
    assert pending is not None, f"{config.model_type} with {layers} decoder layers"  # every layer leaves its MLP output pending
    final = enter(pending, residual, "model.norm.weight", "final_norm", "final_norm", "")[0]
    start = g.node("Neg", ["logits_to_keep"], ["keep_start"], "keep_start")[0]
    kept = g.node(
        "Slice", [final, start, g.const("keep_end", np.array([np.iinfo(np.int64).max])), g.const("keep_axis", np.array([1]))],
        ["kept_hidden"], "keep_last",
    )[0]  # fmt: skip
    # Granite divides its logits, Gemma 2 soft-caps them: cap · tanh(logits / cap).
    after_head: list[tuple[str, float | None]] = []
    if plan.logits_scaling != 1.0:
        after_head.append(("Div", plan.logits_scaling))
    if plan.final_softcap:
        after_head += [("Div", plan.final_softcap), ("Tanh", None), ("Mul", plan.final_softcap)]
    logits_name = "logits" if dtype == "float32" and not after_head else "lm_head/out"
    if head_quant is None and tied:
        # Tied weights: one copy on disk; ONNX Runtime folds the transpose once at load.
        weight_bytes += vocab * config.hidden_size * item
        head = g.node("Transpose", [embed], ["lm_head.weight_t"], "lm_head_transpose", perm=[1, 0])[0]
        g.node("MatMul", [kept, head], [logits_name], "lm_head")
    elif tied and embed_blocks is not None and head_quant is not None:
        # The tied head reads the embedding's carried table: MatMulNBits wants it as [N, blocks, bytes].
        weight_bytes += carried_bytes(embed_blocks)
        carried.append("lm_head.weight_t")
        shape = g.const("lm_head.quant_shape", np.array([vocab, -1, embed_blocks.packed.shape[2]], dtype=np.int64))
        blocks3 = g.node("Reshape", ["model.embed_tokens.quant", shape], ["lm_head.quant"], "lm_head_blocks")[0]
        flat = g.const("lm_head.scales_shape", np.array([-1], dtype=np.int64))
        head_inputs = [kept, blocks3, g.node("Reshape", [embed_scales, flat], ["lm_head.scales"], "lm_head_scales")[0]]
        if embed_zero_points:
            head_inputs.append(g.node("Reshape", [embed_zero_points, flat], ["lm_head.zero_points"], "lm_head_zero_points")[0])
        minimum = embed_blocks.minimums is not None
        y = g.node(
            "MatMulNBits", head_inputs, ["lm_head/nbits/out" if minimum else logits_name], "lm_head/nbits" if minimum else "lm_head", MS_DOMAIN,
            K=config.hidden_size, N=vocab, bits=embed_blocks.bits, block_size=embed_blocks.block_size, accuracy_level=head_quant.accuracy_level,
        )[0]  # fmt: skip
        if minimum:
            head_offsets = g.node("Transpose", [embed_offsets], ["lm_head.offsets"], "lm_head_offsets_t", perm=[1, 0])[0]
            logits = add_offsets(kept, y, head_offsets, "lm_head.weight_t", "lm_head", embed_blocks.block_size)
            if logits_name == "logits":
                g.node("Identity", [logits], ["logits"], "logits")
    else:
        # A quantized head is its own copy, beside the embedding's rows.
        head_name = "model.embed_tokens.weight" if tied else "lm_head.weight"
        logits = matmul(kept, [head_name], "lm_head.weight_t", "lm_head", head_quant)
        if logits_name == "logits":
            g.node("Identity", [logits], ["logits"], "logits")
    for step, (op, value) in enumerate(after_head):
        last = step == len(after_head) - 1
        out = "logits" if last and dtype == "float32" else f"lm_head/{op.lower()}{step}"
        operands = [g.nodes[-1].output[0], *([g.const(f"lm_head/{op.lower()}{step}_by", np.array(value, dtype=np.float32))] if value else [])]
        g.node(op, operands, [out], f"lm_head/{op.lower()}{step}")
    if dtype != "float32":
        # The sampler reads float32 logits from every engine: cast once, at the very end.
        g.node("Cast", [g.nodes[-1].output[0]], ["logits"], "logits", to=f32)
    g.finish()

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
    onnx.save_model(proto, str(out_dir / GRAPH_FILE))  # the weights are in model.onnx.data already
    write_kv_copy_graph(out_dir / COPY_GRAPH_FILE, 2 * layers, [kv_heads, max_context, head_dim], elem[dtype])
    layout = KVLayout(
        layers=layers, kv_heads=kv_heads, head_dim=head_dim, max_length=max_context, dtype=dtype, shared_buffer=True, copy_graph=COPY_GRAPH_FILE,
    )  # fmt: skip
    return BuiltGraph(GRAPH_FILE, tuple(inputs), tuple(outputs), layout, len(g.nodes), weight_bytes, tuple(carried), tuple(rounded))


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


def long_rope_positions(g: GraphWriter, max_context: int, long_from: int) -> str:
    """position_ids [batch, new] for GroupQueryAttention's rotary embedding: each row's positions
    (cached + j, as the node computes them itself), plus max_context where the row's total length
    passes `long_from`, which selects the long-factor half of the caches for that row alone.
    transformers switches the same way at each forward: a cached prefix keeps the factors it was
    computed with."""
    ids_shape = g.node("Shape", ["input_ids"], ["rope/ids_shape"], "rope/ids_shape")[0]
    new = g.node("Gather", [ids_shape, g.const("rope/one", np.array(1, dtype=np.int64))], ["rope/new"], "rope/new", axis=0)[0]
    steps = g.node("Range", [g.const("rope/zero", np.array(0, dtype=np.int64)), new, g.const("rope/step", np.array(1, dtype=np.int64))], ["rope/steps"], "rope/steps")[0]
    lengths = g.node("Cast", ["seqlens_k"], ["rope/seqlens"], "rope/seqlens", to=7)[0]  # int64
    totals = g.node("Add", [lengths, g.const("rope/plus_one", np.array(1, dtype=np.int64))], ["rope/totals"], "rope/totals")[0]
    past = g.node("Sub", [totals, new], ["rope/past"], "rope/past")[0]
    long = g.node("Greater", [totals, g.const("rope/long_from", np.array(long_from, dtype=np.int64))], ["rope/long"], "rope/long")[0]
    offset = g.node("Mul", [g.node("Cast", [long], ["rope/long_i64"], "rope/long_i64", to=7)[0], g.const("rope/half", np.array(max_context, dtype=np.int64))], ["rope/offset"], "rope/offset")[0]
    first = g.node("Add", [past, offset], ["rope/first"], "rope/first")[0]
    column = g.node("Unsqueeze", [first, g.const("rope/axis1", np.array([1], dtype=np.int64))], ["rope/first_col"], "rope/first_col")[0]
    return g.node("Add", [column, steps], ["position_ids"], "rope/position_ids")[0]


def _lm_head_is_tied(config: Any, names: set[str]) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in names
