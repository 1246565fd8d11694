"""A random-weight GGUF of a real model's shapes, for measuring export and serving at size.

Speed and memory do not depend on the weights' values, so a file with the shapes of
Llama-3.2-1B (or 3B, 8B) and random blocks measures what that model would cost, without a
download. The tokenizer, chat template and special tokens are copied from a GGUF we have
(the default SmolLM2 file: its 49,152-token vocabulary), the projections are Q4_1 blocks and
the embedding Q8_0 blocks, as in SmolLM2's file; the blocks' scales are chosen so that the
weights have a plausible spread (values never reach inf or nan in fp16 or fp32).

    python bench/random_gguf.py --shape 1b --out bench/peers/llama-1b-shaped.gguf

Writes the file a tensor at a time (about 30 s and the largest tensor in memory for 1B).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int


# Llama-3.2's shapes (the vocabulary is the tokenizer source's).
SHAPES = {
    "1b": Shape(hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, ffn=8192),
    "3b": Shape(hidden=3072, layers=28, heads=24, kv_heads=8, head_dim=128, ffn=8192),
    "8b": Shape(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, ffn=14336),
    # A few hundred MB: the export memory test's model.
    "300m": Shape(hidden=1024, layers=16, heads=16, kv_heads=4, head_dim=64, ffn=4096),
}
_BLOCK = 32
_WEIGHT_SPREAD = 0.02  # about the std of a trained model's projections


def _q4_1_rows(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """Random Q4_1 blocks [rows, columns/32 × 20 bytes]: fp16 d, fp16 m, 16 bytes of nibbles."""
    blocks = rows * (columns // _BLOCK)
    out = np.empty((blocks, 20), dtype=np.uint8)
    d = np.full(blocks, 2 * _WEIGHT_SPREAD / 15, dtype=np.float16)
    m = (-7.5 * d.astype(np.float32)).astype(np.float16)
    out[:, 0:2] = d.view(np.uint8).reshape(blocks, 2)
    out[:, 2:4] = m.view(np.uint8).reshape(blocks, 2)
    out[:, 4:] = rng.integers(0, 256, size=(blocks, 16), dtype=np.uint8)
    out[:, 4] = 0xF0  # element 0 at level 0 and element 16 at level 15: llama.cpp's quantizer puts each block's min and max there
    return out.reshape(rows, -1)


def _q8_0_rows(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """Random Q8_0 blocks [rows, columns/32 × 34 bytes]: fp16 d, 32 signed bytes."""
    blocks = rows * (columns // _BLOCK)
    out = np.empty((blocks, 34), dtype=np.uint8)
    out[:, 0:2] = np.full(blocks, _WEIGHT_SPREAD / 64, dtype=np.float16).view(np.uint8).reshape(blocks, 2)
    out[:, 2:] = rng.integers(0, 256, size=(blocks, 32), dtype=np.uint8)
    out[:, 2] = 127  # each block's largest magnitude at ±127, as llama.cpp's Q8_0 quantizer leaves it
    return out.reshape(rows, -1)


def write_random_gguf(out: Path, shape: Shape, tokenizer_gguf: Path, seed: int = 0) -> Path:
    """Write a llama GGUF of `shape` with random blocks and `tokenizer_gguf`'s tokenizer."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    source = GGUFReader(str(tokenizer_gguf))
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = GGUFWriter(str(partial), "llama")
    for key, field in source.fields.items():
        if key.startswith(("GGUF.", "llama.", "general.")) or key == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub)
    writer.add_name(f"random llama {shape.hidden}x{shape.layers}")
    writer.add_block_count(shape.layers)
    writer.add_context_length(8192)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(3)  # MOSTLY_Q4_1

    rng = np.random.default_rng(seed)
    plan: list[tuple[str, str, int, int]] = [("token_embd.weight", "Q8_0", vocab, shape.hidden)]
    q_out, kv_out = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    for i in range(shape.layers):
        plan += [
            (f"blk.{i}.attn_norm.weight", "F32", 0, shape.hidden),
            (f"blk.{i}.attn_q.weight", "Q4_1", q_out, shape.hidden),
            (f"blk.{i}.attn_k.weight", "Q4_1", kv_out, shape.hidden),
            (f"blk.{i}.attn_v.weight", "Q4_1", kv_out, shape.hidden),
            (f"blk.{i}.attn_output.weight", "Q4_1", shape.hidden, q_out),
            (f"blk.{i}.ffn_norm.weight", "F32", 0, shape.hidden),
            (f"blk.{i}.ffn_gate.weight", "Q4_1", shape.ffn, shape.hidden),
            (f"blk.{i}.ffn_up.weight", "Q4_1", shape.ffn, shape.hidden),
            (f"blk.{i}.ffn_down.weight", "Q4_1", shape.hidden, shape.ffn),
        ]
    plan.append(("output_norm.weight", "F32", 0, shape.hidden))

    def make(kind: str, rows: int, columns: int) -> np.ndarray:
        if kind == "F32":
            return (1.0 + 0.05 * rng.standard_normal(columns)).astype(np.float32)
        return _q4_1_rows(rng, rows, columns) if kind == "Q4_1" else _q8_0_rows(rng, rows, columns)

    # Header and tensor infos first, then each tensor's data as it is made: one tensor in memory.
    for name, kind, rows, columns in plan:
        if kind == "F32":
            writer.add_tensor_info(name, (columns,), np.dtype(np.float32), columns * 4)
        else:
            nbytes = rows * columns // _BLOCK * (20 if kind == "Q4_1" else 34)
            writer.add_tensor_info(name, (rows, nbytes // rows), np.dtype(np.uint8), nbytes, raw_dtype=GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, kind, rows, columns in plan:
        writer.write_tensor_data(make(kind, rows, columns))
    writer.close()
    partial.replace(out)
    return out


def default_tokenizer_gguf() -> Path:
    """The default SmolLM2 GGUF (pulled once, as `make models` does)."""
    from export.default_models import DEFAULT_MODELS
    from export.pull import pull

    return pull(DEFAULT_MODELS["smollm2-135m-instruct"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer-gguf", type=Path, help="a GGUF whose tokenizer to copy (default: the SmolLM2 default model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = write_random_gguf(args.out, SHAPES[args.shape], args.tokenizer_gguf or default_tokenizer_gguf(), args.seed)
    print(f"{path}: {path.stat().st_size / 1e6:,.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
