"""Block carriers: a GGUF tensor's quantized blocks mapped onto ONNX Runtime's operators exactly.

Every carrier reads the file's own bytes (export/tensors.py: RawBlocks) and writes the same
integers and the same fp16 scales, re-laid for MatMulNBits [N, blocks, bytes]:

* Q4_0 (w = d·(q − 8)): a symmetric 4-bit MatMulNBits, scale d. Nothing else.
* Q4_1 (w = d·q + m): MatMulNBits has no float zero point on its fast path, so the block is
  split in two exact parts, x·w = Σ d·(q − 8)·x + Σ (m + 8d)·sum(x over the block): a
  symmetric 4-bit MatMulNBits (scale d) plus a small MatMul of the per-block input sums with
  the offsets m + 8d.
* Q8_0 (w = d·q, q signed): a symmetric 8-bit MatMulNBits (its unsigned bytes are q + 128), or
  the embedding's GatherBlockQuantized rows (same bytes).

Scales (and Q4_1's minimums) stay fp16 in the engine file, as in the GGUF; the graph casts
them to the compute dtype, which ONNX Runtime folds once at load. A carried matrix takes the
source's bytes on disk: 20 bytes per 32 weights for Q4_1, 18 for Q4_0, 34 for Q8_0.

In GGUF's 4-bit blocks byte j holds element j (low nibble) and element j + 16 (high);
MatMulNBits wants elements 2j and 2j + 1 in byte j.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.tensors import RawBlocks

BLOCK = 32  # every type carried here has blocks of 32 inputs
# bytes per block: fp16 d [, fp16 m], then the quantized values
_LAYOUT = {"Q4_0": (18, False, 4), "Q4_1": (20, True, 4), "Q8_0": (34, False, 8)}
CARRIED_TYPES = tuple(_LAYOUT)


@dataclass(frozen=True)
class CarriedBlocks:
    """A matrix W [K in, N out] as MatMulNBits reads it: w = scale·(q − 2^(bits−1)) [+ minimum]."""

    packed: np.ndarray  # uint8 [N, blocks, 32·bits/8]
    scales: np.ndarray  # float16 [N, blocks]: the file's d
    minimums: np.ndarray | None  # float16 [N, blocks]: Q4_1's m (the offsets are m + 8d)
    k: int
    n: int
    bits: int
    kind: str

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.minimums is None else self.minimums.nbytes)


def carry(raw: RawBlocks) -> CarriedBlocks | None:
    """The blocks of `raw` re-laid for MatMulNBits, or None for a type we do not carry."""
    layout = _LAYOUT.get(raw.kind)
    if layout is None or raw.columns % BLOCK:
        return None
    size, has_min, bits = layout
    rows = raw.data.shape[0]
    blocks = raw.columns // BLOCK
    data = np.asarray(raw.data).reshape(rows, blocks, size)
    scales = np.ascontiguousarray(data[..., 0:2]).view(np.float16)[..., 0]
    minimums = np.ascontiguousarray(data[..., 2:4]).view(np.float16)[..., 0] if has_min else None
    values = data[..., 4 if has_min else 2 :]
    if bits == 8:
        packed = values ^ np.uint8(0x80)  # signed q → unsigned q + 128, MatMulNBits' 8-bit zero point
    else:
        low, high = values & np.uint8(0x0F), values >> np.uint8(4)  # elements 0..15 and 16..31
        q = np.concatenate([low, high], axis=2)
        packed = q[..., 0::2] | (q[..., 1::2] << np.uint8(4))
    return CarriedBlocks(np.ascontiguousarray(packed, dtype=np.uint8), scales, minimums, raw.columns, rows, bits, raw.kind)


def stack(parts: list[CarriedBlocks]) -> CarriedBlocks | None:
    """Matrices that share their input (q|k|v, gate|up) as one: their output rows stacked.
    None when the parts are of different kinds (they are then carried one by one)."""
    first = parts[0]
    if any(p.kind != first.kind or p.k != first.k for p in parts):
        return None
    if len(parts) == 1:
        return first
    minimums = None if first.minimums is None else np.concatenate([p.minimums for p in parts if p.minimums is not None])
    return CarriedBlocks(
        np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]), minimums,
        first.k, sum(p.n for p in parts), first.bits, first.kind,
    )  # fmt: skip


def dequantize_carried(blocks: CarriedBlocks) -> np.ndarray:
    """W [K, N] in fp32 as the engine computes it (for tests and checks)."""
    n, count = blocks.scales.shape
    if blocks.bits == 4:
        q = np.empty((n, count, BLOCK), dtype=np.float32)
        q[..., 0::2] = blocks.packed & 0x0F
        q[..., 1::2] = blocks.packed >> 4
        middle = 8.0
    else:
        q, middle = blocks.packed.astype(np.float32), 128.0
    scales = blocks.scales.astype(np.float32)[..., None]
    w = (q - middle) * scales
    if blocks.minimums is not None:
        w = w + (blocks.minimums.astype(np.float32)[..., None] + 8 * scales)
    return w.reshape(n, -1).T
