"""GGUF block helpers for the tests: quantizers for the types gguf-py only de-quantizes (Q4_K, Q5_K,
Q6_K), a tiny-llama GGUF writer with a block type per tensor, and the weights an exported engine
computes with, rebuilt from its ONNX initializers as MatMulNBits / GatherBlockQuantized define them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

QK_K = 256


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _k_levels(blocks: np.ndarray, levels: int, sub: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K/Q5_K-style asymmetric sub-blocks: (d, dmin, 6-bit scales, 6-bit minimums, q) for
    blocks [n, 256] cut into sub-blocks of `sub` with w ≈ d·sc·q − dmin·m, q in 0..levels."""
    n = blocks.shape[0]
    x = blocks.reshape(n, -1, sub)
    low = np.minimum(x.min(axis=2), 0.0)
    scale = (x.max(axis=2) - low) / levels
    d = (scale.max(axis=1) / 63).astype(np.float16).astype(np.float32)
    dmin = (-low.min(axis=1) / 63).astype(np.float16).astype(np.float32)
    safe = lambda v: np.where(v == 0, 1.0, v)  # noqa: E731
    sc = np.clip(np.round(scale / safe(d)[:, None]), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(-low / safe(dmin)[:, None]), 0, 63).astype(np.uint8)
    step = d[:, None] * sc
    q = np.clip(np.round((x + (dmin[:, None] * mn)[..., None]) / safe(step)[..., None]), 0, levels).astype(np.uint8)
    return d, dmin, sc, mn, q.reshape(n, QK_K)


def _k_scale_bytes(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 6-bit scales and minimums → the 12 bytes Q4_K/Q5_K store them in."""
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """[n, 256] floats → [n, 144] Q4_K blocks: d, dmin, scales, 4 × 32 bytes (sub-blocks 2i low, 2i + 1 high)."""
    d, dmin, sc, mn, q = _k_levels(blocks, 15, 32)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _k_scale_bytes(sc, mn), qs], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """[n, 256] floats → [n, 176] Q5_K blocks: d, dmin, scales, 32 bytes of fifth bits, 128 of nibbles."""
    d, dmin, sc, mn, q = _k_levels(blocks, 31, 32)
    sub = q.reshape(-1, 8, 32)
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for j in range(8):
        qh |= ((sub[:, j] >> 4) & 1) << j
    low = (sub & 0x0F).reshape(-1, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _k_scale_bytes(sc, mn), qh, qs], axis=1)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """[n, 256] floats → [n, 210] Q6_K blocks: 128 bytes of low nibbles, 64 of high pairs, 16 int8 scales, d."""
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    scale = np.abs(x).max(axis=2) / 31
    d = (scale.max(axis=1) / 127).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / np.where(d == 0, 1.0, d)[:, None]), -128, 127).astype(np.int8)
    step = d[:, None] * sc
    q = (np.clip(np.round(x / np.where(step == 0, 1.0, step)[..., None]), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    ql = (q[:, :, :64] & 0x0F) | ((q[:, :, 64:] & 0x0F) << 4)  # [n, 2, 64]
    t = q.reshape(n, 2, 4, 32) >> 4
    qh = t[:, :, 0] | (t[:, :, 1] << 2) | (t[:, :, 2] << 4) | (t[:, :, 3] << 6)  # [n, 2, 32]
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), _f16_bytes(d)], axis=1)


def random_q3_k(blocks: np.ndarray) -> np.ndarray:
    """[n, 256] → [n, 110] Q3_K blocks of random integers with a small d (a type we do not carry:
    any bytes with a finite fp16 d are valid blocks)."""
    rng = np.random.default_rng(blocks.shape[0])
    out = rng.integers(0, 256, size=(blocks.shape[0], 110), dtype=np.uint8)
    out[:, 108:110] = _f16_bytes(np.full(blocks.shape[0], 0.002, dtype=np.float32))
    return out


OUR_QUANTIZERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {
    "Q4_K": (quantize_q4_k, 144), "Q5_K": (quantize_q5_k, 176), "Q6_K": (quantize_q6_k, 210), "Q3_K": (random_q3_k, 110),
}  # fmt: skip


def quantize(array: np.ndarray, kind: str) -> np.ndarray:
    """Rows of floats [rows, columns] → GGUF blocks [rows, bytes]: gguf-py's quantizer where it has
    one, ours for the K-quants."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    array = np.ascontiguousarray(array, dtype=np.float32)
    if kind in OUR_QUANTIZERS:
        encode, size = OUR_QUANTIZERS[kind]
        rows = array.shape[0]
        return encode(array.reshape(-1, QK_K)).reshape(rows, -1)
    return gguf_quantize(array, GGMLQuantizationType[kind])


def q4_k_m_types(gguf_name: str) -> str:
    """A Q4_K_M-like mix: Q4_K, with attn_v and ffn_down of layer 0 in Q6_K, the other layers' in
    Q4_K and Q5_K (so q|k|v mix types), layer 1's ffn_up in Q8_0, the embedding and the output in Q6_K."""
    if gguf_name in ("token_embd.weight", "output.weight"):
        return "Q6_K"
    layer = int(gguf_name.split(".")[1])
    if gguf_name.endswith(("attn_v.weight", "ffn_down.weight")):
        return "Q6_K" if layer == 0 else "Q5_K"
    if gguf_name.endswith("ffn_up.weight") and layer == 1:
        return "Q8_0"  # gate|up of one layer in two types
    return "Q4_K"


def write_gguf(path: Path, hf_folder: Path, types: Callable[[str], str]) -> Path:
    """The tiny llama of `hf_folder` (tests/tiny_models.make_tiny_llama) as a GGUF the way
    llama.cpp's converter writes it (q/k rows permuted, byte-level BPE tokenizer), each matrix
    (the embedding, an untied output) in the block type `types(gguf name)` gives, the norms F32."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from safetensors.numpy import load_file

    from tests.tiny_models import CHATML

    config = json.loads((hf_folder / "config.json").read_text())
    tokenizer = json.loads((hf_folder / "tokenizer.json").read_text())
    weights = load_file(str(hf_folder / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's convert_hf_to_gguf permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    vocab = tokenizer["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    tokens = sorted({**vocab, **added}.items(), key=lambda item: item[1])
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in tokens])
    writer.add_token_types([3 if t in added else 1 for t, _ in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def add(name: str, array: np.ndarray, kind: str | None = None) -> None:
        kind = kind or types(name)
        if kind == "F32":
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        else:
            writer.add_tensor(name, quantize(array, kind), raw_dtype=GGMLQuantizationType[kind])

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        add(f"blk.{i}.attn_norm.weight", weights[f"{p}.input_layernorm.weight"], "F32")
        add(f"blk.{i}.attn_q.weight", permute(weights[f"{p}.self_attn.q_proj.weight"], heads))
        add(f"blk.{i}.attn_k.weight", permute(weights[f"{p}.self_attn.k_proj.weight"], kv_heads))
        add(f"blk.{i}.attn_v.weight", weights[f"{p}.self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", weights[f"{p}.self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", weights[f"{p}.post_attention_layernorm.weight"], "F32")
        add(f"blk.{i}.ffn_gate.weight", weights[f"{p}.mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", weights[f"{p}.mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", weights[f"{p}.mlp.down_proj.weight"])
    add("output_norm.weight", weights["model.norm.weight"], "F32")
    if "lm_head.weight" in weights and not config.get("tie_word_embeddings", False):
        add("output.weight", weights["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def engine_weights(model: Any, arrays: dict[str, np.ndarray], node_name: str) -> np.ndarray:
    """W [K, N] (fp32) of the MatMulNBits node `node_name` of `model` (an onnx ModelProto whose
    initializers are `arrays`): scale·(b − zero point) as MatMulNBits defines it, plus the per-block
    offsets the graph adds through its block-sums MatMul (node `<prefix>/offsets`), evaluated from
    the initializers with the graph's own fp32 arithmetic."""
    nodes = {n.name: n for n in model.graph.node}
    node = nodes[node_name]
    attrs = {a.name: a.i for a in node.attribute}
    k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    blocks = -(-k // block)

    def value(name: str) -> np.ndarray:
        return _constant(model, arrays, name)

    packed = value(node.input[1])
    scales = value(node.input[2]).astype(np.float32).reshape(n, blocks)
    b = np.empty((n, blocks, block), dtype=np.float32)
    packed = packed.reshape(n, blocks, -1)
    if bits == 4:
        b[..., 0::2] = packed & 0x0F
        b[..., 1::2] = packed >> 4
    else:
        b[...] = packed
    if len(node.input) > 3 and node.input[3]:
        zp = value(node.input[3]).reshape(n, -1)
        zero = (np.stack([zp & 0x0F, zp >> 4], axis=2).reshape(n, -1)[:, :blocks] if bits == 4 else zp).astype(np.float32)
    else:
        zero = np.full((n, blocks), 1 << (bits - 1), dtype=np.float32)
    w = (b - zero[..., None]) * scales[..., None]
    prefix = node_name[: -len("/nbits")] if node_name.endswith("/nbits") else None
    if prefix is not None and f"{prefix}/offsets" in nodes:
        t = value(nodes[f"{prefix}/offsets"].input[1]).astype(np.float32)  # [blocks, N]
        w = w + t.T[..., None]
    return w.reshape(n, -1)[:, :k].T


def embedding_rows(model: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The embedding table [V, K] the engine's GatherBlockQuantized (plus its gathered offsets, if any) reads."""
    nodes = {n.name: n for n in model.graph.node}
    node = nodes["embed_tokens"]
    attrs = {a.name: a.i for a in node.attribute}
    bits, block = attrs["bits"], attrs["block_size"]
    data = arrays[node.input[0]]
    rows = data.shape[0]
    scales = _constant(model, arrays, node.input[2]).astype(np.float32)
    blocks = scales.shape[1]
    if bits == 4:
        q = np.empty((rows, data.shape[1] * 2), dtype=np.float32)
        q[:, 0::2], q[:, 1::2] = data & 0x0F, data >> 4
    else:
        q = data.astype(np.float32)
    q = q.reshape(rows, blocks, block)
    if len(node.input) > 3 and node.input[3]:
        zp = arrays[node.input[3]].reshape(rows, -1)
        zero = (np.stack([zp & 0x0F, zp >> 4], axis=2).reshape(rows, -1)[:, :blocks] if bits == 4 else zp).astype(np.float32)
    else:
        zero = np.full((rows, blocks), 1 << (bits - 1), dtype=np.float32)
    w = (q - zero[..., None]) * scales[..., None]
    if "embed_tokens/offsets" in nodes:
        t = _constant(model, arrays, nodes["embed_tokens/offsets"].input[0]).astype(np.float32)  # [V, blocks]
        w = w + t[..., None]
    return w.reshape(rows, -1)


def _constant(model: Any, arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    from onnx import helper

    producers = {out: n for n in model.graph.node for out in n.output}
    if name in arrays:
        return arrays[name]
    p = producers[name]
    ins = [_constant(model, arrays, i) for i in p.input]
    ops: dict[str, Callable[..., np.ndarray]] = {
        "Cast": lambda a: a.astype(helper.tensor_dtype_to_np_dtype(next(x.i for x in p.attribute if x.name == "to"))),
        "Mul": lambda a, b: a * b, "Add": lambda a, b: a + b, "Reshape": lambda a, s: a.reshape(s), "Transpose": lambda a: a.T,
    }  # fmt: skip
    return ops[p.op_type](*ins)
