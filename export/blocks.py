"""Block carriers: a GGUF tensor's quantized blocks mapped onto ONNX Runtime's operators exactly.

Every carrier reads the file's own bytes (export/tensors.py: RawBlocks) and writes the same
integers, re-laid for MatMulNBits [N, blocks, block_size·bits/8] (or the embedding's
GatherBlockQuantized rows), with per-block scales s, zero points z and, for the types with a
minimum, a per-block offset t, so that the engine's weight is

    w = s·(b − z) + t,   t = minimum + centre·s   (both in fp32)

b the stored integer. s·(b − z) is exact in fp32 (an fp16 d of 11 significant bits, times a
sub-block scale of at most 7, times b − z of at most 5: at most 23 bits), and t is chosen so
that it is an fp32 value too, so w takes the one rounding gguf-py's de-quantization takes
(fl(d·q + m), fl(d·sc·q − dmin·m)): the engine's weights are the file's, bit for bit.

    type  GGUF bytes  MatMulNBits                     s      b (z: the default 8 / 128)   t                   engine bytes
          per 32 w                                                                                          per 32 weights
    Q4_0    18        4-bit, blocks of 32             d      q                            -                   18
    Q4_1    20        4-bit, 32, + offsets            d      q (z = 0 explicit)           m + 8d (m)          20 (20.5)
    Q5_0    22        8-bit, 32                       d      q + 112                      -                   34
    Q5_1    24        8-bit, 32, + offsets            d      q + 112 (q + 128)            m + 16d (m)         36
    Q8_0    34        8-bit, 32                       d      q + 128                      -                   34
    Q4_K    18        4-bit, 32, + offsets            d·sc   q (z = 0 explicit)           −dmin·m + 8s (...)  24 (24.5)
    Q5_K    22        8-bit, 32, + offsets            d·sc   q + 112 (q + 128)            −dmin·m + 16s (...) 40
    Q6_K    26.25     8-bit, blocks of 16             d·sc   q + 96                       -                   40

(The K-quants: super-blocks of 256 weights with fp16 d and dmin and 6-bit scales sc and
minimums m of 32-weight sub-blocks, or Q6_K's int8 scales of 16-weight sub-blocks; q the
block's unsigned integer, Q4_0/Q5_0/Q6_K centred at 8/16/32, Q8_0 signed. In parentheses: the
fallback described below.) MatMulNBits has no float zero point on its fast path, so a minimum
is carried as offsets, added by a small MatMul of the input's block sums:
x·w = Σ s·(b − z)·x + Σ t·sum(x over the block). The offsets are centred (t = minimum + 8s with
the default zero point 8; minimum + 16s with b = q + 112) because that keeps the integers the
kernel multiplies by its int8 activations small (accuracy_level 4) and needs no zero-point
input (MatMulNBits is up to ~20% slower at batch 1 with one); a matrix where some
minimum + centre·s is not an fp32 value (|m| and d some 2^13 apart) falls back to t = minimum,
with explicit zero points 0 (4-bit) or b = q + 128 (8-bit): exact either way.

Scales that are fp16 in the file (d) stay fp16 in the engine file and the graph casts them to the
compute dtype (folded once at load), Q4_1/Q5_1's minimums too, t computed by the graph in fp32;
the K-quants' d·sc and t are not fp16 values and are stored as fp32. fp16 (GPU) engines compute
with fp16 scales and offsets: there the K-quants' d·sc and every offset t are rounded to fp16
(the integers and the fp16 d of Q4_*/Q5_*/Q8_0 stay exact). Types not listed (IQ*, Q2_K, Q3_K,
...) are not carried: the builder re-rounds them and lists them.

In GGUF's 4-bit blocks byte j holds element j (low nibble) and element j + 16 (high);
MatMulNBits wants elements 2j and 2j + 1 in byte j.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from export.tensors import RawBlocks

BLOCK = 32  # the block of the 32-weight types and of Q4_K/Q5_K's sub-blocks
SUPER = 256  # a K-quant super-block
# kind: (weights per GGUF block, bytes per GGUF block, MatMulNBits bits, block size)
_LAYOUT = {
    "Q4_0": (32, 18, 4, 32), "Q4_1": (32, 20, 4, 32), "Q5_0": (32, 22, 8, 32), "Q5_1": (32, 24, 8, 32), "Q8_0": (32, 34, 8, 32),
    "Q4_K": (256, 144, 4, 32), "Q5_K": (256, 176, 8, 32), "Q6_K": (256, 210, 8, 16),
}  # fmt: skip
CARRIED_TYPES = tuple(_LAYOUT)


@dataclass(frozen=True)
class CarriedBlocks:
    """A matrix W [K in, N out] as MatMulNBits reads it, per block of `block_size` inputs:
    w = scale·(b − zero point) [+ minimum + centre·scale], in fp32."""

    packed: np.ndarray  # uint8 [N, blocks, block_size·bits/8]: b
    scales: np.ndarray  # [N, blocks]: float16 (the file's d) or float32 (the K-quants' d·sc)
    minimums: np.ndarray | None  # [N, blocks]: float16 m (Q4_1, Q5_1) or float32 −dmin·m (Q4_K, Q5_K)
    k: int
    n: int
    bits: int
    kind: str
    block_size: int = BLOCK
    centre: int = 8  # the offsets are minimum + centre·scale
    zero_point: int | None = None  # None: MatMulNBits' default 2^(bits−1); else this one for every block (an input)

    @property
    def zero_points(self) -> np.ndarray | None:
        """MatMulNBits' zero-point input (uint8 [N × ceil(blocks·bits/8)], 4-bit ones two a byte), or None."""
        if self.zero_point is None:
            return None
        blocks = self.scales.shape[1]
        if self.bits == 8:
            return np.full(self.n * blocks, self.zero_point, dtype=np.uint8)
        return np.full(self.n * ((blocks + 1) // 2), self.zero_point | (self.zero_point << 4), dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        zero_points = self.zero_points
        return (
            self.packed.nbytes + self.scales.nbytes + (0 if self.minimums is None else self.minimums.nbytes)
            + (0 if zero_points is None else zero_points.nbytes)
        )  # fmt: skip


def _f16(data: np.ndarray, at: int) -> np.ndarray:
    """The fp16 value at byte `at` of each GGUF block [..., bytes], as float32."""
    return np.ascontiguousarray(data[..., at : at + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF's 32-weight nibble layout [..., 16] → the 32 values (low nibbles first, then high)."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's 4 bytes of fifth bits [..., 4] → [..., 32] (bit j of the little-endian word: element j)."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of 6-bit sub-block scales and minimums → ([..., 8], [..., 8]) uint8."""
    d, m, md = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _unpack(kind: str, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """GGUF blocks [rows, count, bytes] → (q uint8 [rows, count, weights], scale float32
    [rows, sub-blocks], minimum float32 [rows, sub-blocks] or None, q's zero) with w = scale·(q − zero) + minimum."""
    rows, count = data.shape[:2]
    if kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        d = _f16(data, 0)
        has_min = kind in ("Q4_1", "Q5_1")
        at = 4 if has_min else 2
        if kind == "Q8_0":
            return data[..., 2:] ^ np.uint8(0x80), d, None, 128  # signed q → q + 128
        if kind in ("Q4_0", "Q4_1"):
            q = _nibbles(data[..., at:])
        else:
            q = _nibbles(data[..., at + 4 :]) | (_high_bits(data[..., at : at + 4]) << np.uint8(4))
        zero = {"Q4_0": 8, "Q5_0": 16}.get(kind, 0)
        return q, d, _f16(data, 2) if has_min else None, zero
    if kind in ("Q4_K", "Q5_K"):
        d, dmin = _f16(data, 0)[..., None], _f16(data, 2)[..., None]
        sc, mn = _k_scales(data[..., 4:16])
        if kind == "Q4_K":
            qs = data[..., 16:].reshape(rows, count, 4, 32)  # 4 × 32 bytes: sub-blocks 2i (low) and 2i + 1 (high)
            q = np.stack([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=3)
        else:
            qh, qs = data[..., 16:48], data[..., 48:].reshape(rows, count, 4, 32)
            q = np.stack([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=3).reshape(rows, count, 8, 32)
            fifth = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & np.uint8(1)  # [.., 8 sub-blocks, 32]
            q = q | (fifth << np.uint8(4))
        scale = (d * sc.astype(np.float32)).reshape(rows, -1)
        minimum = -(dmin * mn.astype(np.float32)).reshape(rows, -1)
        return q.reshape(rows, count, SUPER), scale, minimum, 0
    if kind == "Q6_K":
        ql, qh, sc, d = data[..., 0:128], data[..., 128:192], data[..., 192:208], _f16(data, 208)[..., None]
        low = np.stack([ql.reshape(rows, count, 2, 64) & np.uint8(0x0F), ql.reshape(rows, count, 2, 64) >> np.uint8(4)], axis=3)
        high = (qh.reshape(rows, count, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & np.uint8(3)
        q = low.reshape(rows, count, SUPER) | (high.reshape(rows, count, SUPER) << np.uint8(4))
        scale = (d * np.ascontiguousarray(sc).view(np.int8).astype(np.float32)).reshape(rows, -1)
        return q, scale, None, 32
    raise KeyError(kind)


def _exact_offsets(minimums: np.ndarray, scales: np.ndarray, centre: int) -> bool:
    """Whether every minimum + centre·scale is an fp32 value (the graph adds it in fp32)."""
    exact = minimums.astype(np.float64) + centre * scales.astype(np.float64)
    return bool(np.all(exact.astype(np.float32).astype(np.float64) == exact))


def carry(raw: RawBlocks) -> CarriedBlocks | None:
    """The blocks of `raw` re-laid for MatMulNBits, or None for a type we do not carry."""
    layout = _LAYOUT.get(raw.kind)
    if layout is None or raw.columns % layout[0]:
        return None
    per_block, size, bits, block_size = layout
    rows = raw.data.shape[0]
    data = np.asarray(raw.data).reshape(rows, raw.columns // per_block, size)
    q, scale, minimum, zero = _unpack(raw.kind, data)
    q = q.reshape(rows, -1, block_size)
    # fp16 where the file's scales and minimums are fp16 (kept as stored), fp32 for the K-quants' products.
    stored = np.float16 if per_block == BLOCK else np.float32
    scales = scale.astype(stored)
    minimums = None if minimum is None else minimum.astype(stored)
    middle = 1 << (bits - 1)
    centre = 8 if bits == 4 else 16  # Q4_1/Q4_K's q in 0..15, Q5_1/Q5_K's in 0..31: their middles
    zero_point = None
    if minimums is not None and not _exact_offsets(minimums, scales, centre):
        centre = 0
        zero_point = 0 if bits == 4 else None
    if bits == 8:
        # b − 128 = q − zero (no minimum) or q − centre: MatMulNBits' default 8-bit zero point.
        shift = (middle - zero) if minimums is None else (middle - centre)  # 0 to 128: b stays within 0..159
        packed = q + np.uint8(shift)
    else:
        packed = q[..., 0::2] | (q[..., 1::2] << np.uint8(4))
    return CarriedBlocks(np.ascontiguousarray(packed, dtype=np.uint8), scales, minimums, raw.columns, rows, bits, raw.kind, block_size, centre, zero_point)


def _uncentred(blocks: CarriedBlocks) -> CarriedBlocks:
    """The same weights with offsets t = minimum (centre 0): 4-bit blocks get zero points 0, 8-bit ones b = q + 128."""
    if blocks.minimums is None or blocks.centre == 0:
        return blocks
    if blocks.bits == 4:
        return dataclasses.replace(blocks, centre=0, zero_point=0)
    packed = blocks.packed + np.uint8(blocks.centre)
    return dataclasses.replace(blocks, packed=packed, centre=0)


def stack(parts: list[CarriedBlocks]) -> CarriedBlocks | None:
    """Matrices that share their input (q|k|v, gate|up) as one: their output rows stacked.
    None when the parts are of different kinds (they are then carried one by one)."""
    first = parts[0]
    if any(p.kind != first.kind or p.k != first.k for p in parts):
        return None
    if len(parts) == 1:
        return first
    if len({(p.centre, p.zero_point) for p in parts}) > 1:
        parts = [_uncentred(p) for p in parts]
        first = parts[0]
    minimums = None if first.minimums is None else np.concatenate([p.minimums for p in parts if p.minimums is not None])
    return dataclasses.replace(
        first, packed=np.concatenate([p.packed for p in parts]), scales=np.concatenate([p.scales for p in parts]),
        minimums=minimums, n=sum(p.n for p in parts),
    )  # fmt: skip


def offsets(blocks: CarriedBlocks) -> np.ndarray | None:
    """The per-block offsets t [N, blocks] in fp32, as the graph computes them, or None."""
    if blocks.minimums is None:
        return None
    scales = blocks.scales.astype(np.float32)
    return blocks.minimums.astype(np.float32) + np.float32(blocks.centre) * scales


def dequantize_carried(blocks: CarriedBlocks) -> np.ndarray:
    """W [K, N] in fp32 as the engine computes it (for tests and checks)."""
    n, count = blocks.scales.shape
    if blocks.bits == 4:
        b = np.empty((n, count, blocks.block_size), dtype=np.float32)
        b[..., 0::2] = blocks.packed & 0x0F
        b[..., 1::2] = blocks.packed >> 4
    else:
        b = blocks.packed.astype(np.float32)
    zero = np.float32(1 << (blocks.bits - 1) if blocks.zero_point is None else blocks.zero_point)
    w = (b - zero) * blocks.scales.astype(np.float32)[..., None]
    t = offsets(blocks)
    if t is not None:
        w = w + t[..., None]
    return w.reshape(n, -1).T
