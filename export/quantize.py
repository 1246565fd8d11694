"""Weight-only block quantization for ONNX Runtime's MatMulNBits (numpy, no torch).

A weight matrix W [K in, N out] is cut, for every output column, into blocks of
`block_size` consecutive input rows. Each block gets its own scale (and, when asymmetric,
its own integer zero point), and its values are rounded to `bits`-bit integers:

    w ≈ (q - zero_point) * scale,   q in [0, 2**bits - 1]

Asymmetric blocks map [min, max] of the block (0 always included, so the zero point is in
range) onto the integer range; symmetric ones use zero point 2**(bits-1) and the block's
largest magnitude. The arrays are laid out as MatMulNBits reads them:

* B: uint8 [N, blocks, block_size * bits / 8]; for 4 bits, element 2j in the low nibble of
  byte j and element 2j+1 in the high nibble;
* scales: float32 [N * blocks];
* zero_points (asymmetric only): uint8 [N * ceil(blocks * bits / 8)], 4-bit ones packed two
  per byte (low nibble first), as B.

K is padded with zeros to a whole number of blocks. `dequantize` inverts `quantize_blocks`
exactly, which is what the tests and the parity report use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class WeightQuantization:
    """How the builder quantizes its MatMul weights (recorded in the manifest's export options)."""

    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
    # MatMulNBits accuracy_level: 0/1 computes in fp32, 4 quantizes activations to int8 per
    # block and runs int8 dot products (the fast CPU path).
    accuracy_level: int = 4
    # The vocabulary projection (tied to the embedding in SmolLM2): "fp32", "int8" or "int4".
    lm_head: str = "int8"
    # "rtn": round every block to the nearest levels. "source-blocks": carry a GGUF's blocks
    # over exactly as stored (export/blocks.py: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K, the
    # 5- to 8-bit types as 8-bit blocks), recover Q4_1 blocks from floats where the source
    # hands over no blocks (see recover_q4_1), and quantize the rest (IQ*, Q2_K, Q3_K, a
    # folder's genuine floats) with SOURCE_BLOCKS_FALLBACK at int4, round to nearest at int8.
    # "mse": integer zero points searched for the least squared error per block (quantize_mse).
    # "hqq": half-quadratic float zero points, carried as per-block offsets (quantize_hqq).
    method: str = "rtn"

    def check(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8 (got {self.bits})")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block size must be a power of two, at least 16 (got {self.block_size})")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy level must be 0 to 4 (got {self.accuracy_level})")
        if self.lm_head not in LM_HEAD_CHOICES:
            raise ValueError(f"lm_head precision must be one of {', '.join(LM_HEAD_CHOICES)} (got {self.lm_head!r})")
        if self.method not in METHODS:
            raise ValueError(f"quantization method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if self.method == "source-blocks" and (self.bits, self.block_size) != (4, 32):
            raise ValueError("source-blocks carries a GGUF's blocks as stored and rounds the others to int4 blocks of 32: it needs int4 with blocks of 32")

    def head(self) -> WeightQuantization | None:
        """The quantization of the vocabulary projection, None to keep it fp32."""
        if self.lm_head == "fp32":
            return None
        if self.method == "source-blocks":
            # A GGUF's head (or the embedding it is tied to) is carried in its own block type
            # (export/blocks.py: Q8_0, Q6_K, ...); these settings only round a head of another
            # type, or one de-quantized from Q8_0 (symmetric int8 blocks of 32 give it back).
            return WeightQuantization(int(self.lm_head[3:]), 32, self.lm_head == "int8", self.accuracy_level, self.lm_head, "source-blocks")
        return WeightQuantization(int(self.lm_head[3:]), self.block_size, self.symmetric, self.accuracy_level, self.lm_head)


LM_HEAD_CHOICES = ("fp32", "int8", "int4")
METHODS = ("rtn", "source-blocks", "hqq", "mse")


@dataclass(frozen=True)
class QuantizedWeight:
    packed: np.ndarray  # uint8 [N, blocks, block_size * bits / 8]
    scales: np.ndarray  # float32 [N * blocks]
    zero_points: np.ndarray | None  # uint8, packed; None when symmetric
    k: int
    n: int
    bits: int
    block_size: int

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    """Quantize W [K, N] (MatMul's B) block-wise along K for each of the N columns."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    w = np.zeros((n, blocks * block_size), dtype=np.float32)
    w[:, :k] = weight.T
    w = w.reshape(n, blocks, block_size)
    levels = (1 << bits) - 1
    if symmetric:
        middle = 1 << (bits - 1)
        scale = np.abs(w).max(axis=2) / (middle - 1)
        zero = np.full((n, blocks), middle, dtype=np.float32)
    else:
        low = np.minimum(w.min(axis=2), 0.0)
        high = np.maximum(w.max(axis=2), 0.0)
        scale = (high - low) / levels
        zero = np.clip(np.round(-low / np.where(scale == 0, 1, scale)), 0, levels)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.round(w / scale[..., None] + zero[..., None]), 0, levels).astype(np.uint8)
    if bits == 4:
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    else:
        packed = q
    zero_points = None
    if not symmetric:
        # Plain ndarray: numpy's stubs widen `uint8 << int` to a signed integer; it stays uint8.
        zp: np.ndarray = zero.astype(np.uint8)
        if bits == 4:
            if blocks % 2:
                zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
            zp = zp[:, 0::2] | (zp[:, 1::2] << 4)
        zero_points = np.ascontiguousarray(zp).reshape(-1)
    return QuantizedWeight(np.ascontiguousarray(packed), scale.reshape(-1), zero_points, k, n, bits, block_size)


def quantize_matrix(weight: np.ndarray, quant: WeightQuantization) -> tuple[QuantizedWeight, np.ndarray | None]:
    """W [K, N] quantized by `quant.method`: (MatMulNBits weight, per-block offsets [blocks, N] or None).

    Offsets (hqq's float zero points) are added by the builder as the block sums of the input
    times the offsets, as it does for recovered Q4_1 blocks (MatMulNBits' fast path takes
    integer zero points only). A matrix whose K is not a whole number of blocks cannot take
    offsets: hqq gives it mse's integer zero points instead. "source-blocks" comes here for the
    matrices the builder could not carry: int4 ones get SOURCE_BLOCKS_FALLBACK, int8 ones (a
    Q8_0 head, carried exactly by symmetric blocks of 32) round to nearest.
    """
    method = quant.method
    if method == "source-blocks" and quant.bits == 4:
        method = SOURCE_BLOCKS_FALLBACK
    if method == "hqq" and weight.shape[0] % quant.block_size == 0:
        return quantize_hqq(weight, quant.bits, quant.block_size)
    if method in ("mse", "hqq"):
        return quantize_mse(weight, quant.bits, quant.block_size, quant.symmetric), None
    return quantize_blocks(weight, quant.bits, quant.block_size, quant.symmetric), None


# How "source-blocks" (what --quant-method auto picks for int4) quantizes an int4 matrix it
# cannot carry: every matrix of a folder source whose weights are genuine floats (not a
# de-quantized Q4_1), and a GGUF's types that are not carried. hqq agrees most with the fp32
# reference (docs/exporting.md, "Int4 quantizers for folder sources").
SOURCE_BLOCKS_FALLBACK = "hqq"

# Elements per slice of columns the iterative quantizers work on: their temporaries stay a few
# hundred MB whatever the matrix (the builder holds one matrix at a time).
_SLICE = 1 << 22


def _column_slices(k: int, n: int, block_size: int):
    width = max(1, _SLICE // (-(-k // block_size) * block_size))
    return [slice(i, min(i + width, n)) for i in range(0, n, width)]


def _blocked(weight: np.ndarray, block_size: int) -> np.ndarray:
    """W [K, n] -> [n, blocks, block_size] float32, K padded with zeros."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    w = np.zeros((n, blocks * block_size), dtype=np.float32)
    w[:, :k] = weight.T
    return w.reshape(n, blocks, block_size)


def _packed(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, k: int, bits: int, block_size: int) -> QuantizedWeight:
    """QuantizedWeight from levels q [N, blocks, block_size], scales and integer zero points
    [N, blocks] (None: symmetric), in quantize_blocks' layout."""
    n, blocks = scale.shape
    q = q.astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else q
    zero_points = None
    if zero is not None:
        zp: np.ndarray = zero.astype(np.uint8)
        if bits == 4:
            if blocks % 2:
                zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
            zp = zp[:, 0::2] | (zp[:, 1::2] << 4)
        zero_points = np.ascontiguousarray(zp).reshape(-1)
    return QuantizedWeight(np.ascontiguousarray(packed), scale.astype(np.float32).reshape(-1), zero_points, k, n, bits, block_size)


def quantize_mse(weight: np.ndarray, bits: int, block_size: int, symmetric: bool, steps: int = 8) -> QuantizedWeight:
    """Integer zero points (MatMulNBits' fast path) chosen for the least squared error per block.

    For every block, candidate scales around round-to-nearest's (the range over levels -3% to
    +7%, or for symmetric blocks 75% to 100% of the largest magnitude's), both integer zero
    points either side of the candidate's, each refitted once by least squares (the scale that
    best maps the block's levels onto its values); the candidate with the least error wins.
    Round to nearest is one of the candidates, so no block comes out worse than rtn's
    (llama.cpp's k-quant search, constrained to integer zero points).
    """
    k, n = weight.shape
    levels = (1 << bits) - 1
    middle = 1 << (bits - 1)
    b_all = _blocked(weight, block_size)
    q_out = np.empty(b_all.shape, dtype=np.uint8)
    scale_out = np.empty(b_all.shape[:2], dtype=np.float32)
    zero_out = np.empty(b_all.shape[:2], dtype=np.float32)
    for cols in _column_slices(k, n, block_size):
        b = b_all[cols]
        if symmetric:
            base = np.abs(b).max(axis=2) / (middle - 1)
            factors = np.linspace(1.0, 0.75, steps)
            zeros = [np.full(base.shape, middle, dtype=np.float32)]
        else:
            low = np.minimum(b.min(axis=2), 0.0)
            base = (np.maximum(b.max(axis=2), 0.0) - low) / levels
            factors = np.concatenate([[1.0], levels / (levels + np.linspace(-0.5, 1.0, steps))])
            zeros = []
        best_err = np.full(base.shape, np.inf, dtype=np.float32)
        best_q = np.zeros(b.shape, dtype=np.float32)
        best_s = np.ones(base.shape, dtype=np.float32)
        best_z = np.full(base.shape, middle, dtype=np.float32)
        for factor in factors:
            s0 = np.where(base == 0, 1.0, base * factor).astype(np.float32)
            candidates = zeros or [np.clip(np.floor(-low / s0), 0, levels), np.clip(np.ceil(-low / s0), 0, levels)]
            for z in candidates:
                s = s0
                q = np.clip(np.round(b / s[..., None] + z[..., None]), 0, levels)
                for refit in (False, True):
                    if refit:  # least-squares scale for these levels, then the levels again
                        d = q - z[..., None]
                        den = (d * d).sum(axis=2)
                        fitted = (b * d).sum(axis=2) / np.where(den > 0, den, 1)
                        s = np.where((den > 0) & (fitted > 0), fitted, s).astype(np.float32)
                        q = np.clip(np.round(b / s[..., None] + z[..., None]), 0, levels)
                    err = (((q - z[..., None]) * s[..., None] - b) ** 2).sum(axis=2)
                    better = err < best_err
                    best_err = np.where(better, err, best_err)
                    best_q = np.where(better[..., None], q, best_q)
                    best_s = np.where(better, s, best_s)
                    best_z = np.where(better, z, best_z)
        q_out[cols], scale_out[cols], zero_out[cols] = best_q, best_s, best_z
    return _packed(q_out, scale_out, None if symmetric else zero_out, k, bits, block_size)


def quantize_hqq(
    weight: np.ndarray, bits: int, block_size: int, iters: int = 20, lp_norm: float = 0.7, beta: float = 10.0, kappa: float = 1.01
) -> tuple[QuantizedWeight, np.ndarray]:
    """Half-Quadratic Quantization (Badri & Shaji 2023), as ONNX Runtime's HQQWeightOnlyQuantizer
    does it: per block, the scale from the block's range and a float zero point refined by a
    proximal solver of ||w - dequantize(quantize(w))||_p, p = 0.7 (sparse errors: an outlier
    costs less than in least squares, so it does not drag the whole block's grid).

    Returns (symmetric weight, offsets): w ≈ s·(q - z) = s·(q - 2^(bits-1)) + s·(2^(bits-1) - z),
    the first term a MatMulNBits without zero points (its fast path), the second the per-block
    offsets [blocks, N] the builder adds from the block sums of the input. K must be a whole
    number of blocks. On weights already on a 4-bit affine grid (a de-quantized Q4_1) the
    solver lands on the grid: exact, as recover_q4_1.
    """
    k, n = weight.shape
    if k % block_size:
        raise ValueError(f"hqq needs K ({k}) to be a whole number of blocks of {block_size}")
    levels = (1 << bits) - 1
    middle = 1 << (bits - 1)
    b_all = _blocked(weight, block_size)
    q_out = np.empty(b_all.shape, dtype=np.uint8)
    scale_out = np.empty(b_all.shape[:2], dtype=np.float32)
    offsets = np.empty(b_all.shape[:2], dtype=np.float32)
    for cols in _column_slices(k, n, block_size):
        b = b_all[cols]
        low, high = b.min(axis=2), b.max(axis=2)
        spread = high - low
        inverse = np.minimum(levels / np.where(spread == 0, levels, spread), 2e4).astype(np.float32)[..., None]
        zero = np.round(-low[..., None] * inverse)
        step, best = beta, np.inf
        for _ in range(iters):
            q = np.clip(np.round(b * inverse + zero), 0, levels)
            error = b - (q - zero) / inverse
            magnitude = np.abs(error)
            shrunk = np.sign(error) * np.maximum(magnitude - np.power(magnitude + 1e-8, lp_norm - 1) / step, 0)
            zero = np.mean(q - (b - shrunk) * inverse, axis=2, keepdims=True)
            step *= kappa
            current = float(magnitude.mean())
            if current >= best:
                break
            best = current
        q_out[cols] = np.clip(np.round(b * inverse + zero), 0, levels)
        scale = (1 / inverse)[..., 0]
        scale_out[cols] = scale
        offsets[cols] = scale * (middle - zero[..., 0])
    return _packed(q_out, scale_out, None, k, bits, block_size), np.ascontiguousarray(offsets.T)


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """W [K, N] as MatMulNBits sees it (the inverse of quantize_blocks' layout)."""
    n, blocks = qw.n, qw.packed.shape[1]
    if qw.bits == 4:
        q = np.empty((n, blocks, qw.block_size), dtype=np.float32)
        q[..., 0::2] = qw.packed & 0x0F
        q[..., 1::2] = qw.packed >> 4
    else:
        q = qw.packed.astype(np.float32)
    if qw.zero_points is None:
        zero = np.full((n, blocks), 1 << (qw.bits - 1), dtype=np.float32)
    elif qw.bits == 4:
        zp = qw.zero_points.reshape(n, -1)
        zero = np.stack([zp & 0x0F, zp >> 4], axis=2).reshape(n, -1)[:, :blocks].astype(np.float32)
    else:
        zero = qw.zero_points.reshape(n, blocks).astype(np.float32)
    w = (q - zero[..., None]) * qw.scales.reshape(n, blocks)[..., None]
    return w.reshape(n, -1)[:, : qw.k].T


def recover_q4_1(weight: np.ndarray, block_size: int = 32) -> tuple[QuantizedWeight, np.ndarray] | None:
    """Carry a de-quantized GGUF Q4_1 matrix W [K, N] over exactly, or None if it is not one.

    Q4_1 stores, per block of 32 inputs, w = d*q + m with q in 0..15; llama.cpp's quantizer
    puts the block's minimum at q=0 and its maximum at q=15, so the floats transformers
    de-quantized give back m = min, d = (max - min) / 15 and q. MatMulNBits has no float
    zero points on its fast path, so the block is split in two exact parts:

        x · w = Σ_blocks d·(q - 8)·x  +  Σ_blocks (m + 8d)·sum(x over the block)

    the first a symmetric 4-bit MatMulNBits (scale d), the second a small MatMul of the
    per-block input sums with the offsets [blocks, N]. Returns (weight, offsets), or None
    when any block does not reconstruct to within float rounding.
    """
    k, n = weight.shape
    if k % block_size:
        return None
    blocks = k // block_size
    w = weight.T.reshape(n, blocks, block_size).astype(np.float32)
    low, high = w.min(axis=2), w.max(axis=2)
    d = (high - low) / 15
    safe = np.where(d == 0, 1.0, d).astype(np.float32)
    q = np.clip(np.round((w - low[..., None]) / safe[..., None]), 0, 15)
    rebuilt = q * d[..., None] + low[..., None]
    tolerance = 1e-5 * np.maximum(np.abs(low), np.abs(high))[..., None] + 1e-30
    if not np.all(np.abs(rebuilt - w) <= tolerance):
        return None
    q = q.astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    scales = safe.astype(np.float32)
    offsets = (low + 8 * scales).T.astype(np.float32)  # [blocks, N]
    return QuantizedWeight(np.ascontiguousarray(packed), scales.reshape(-1), None, k, n, 4, block_size), np.ascontiguousarray(offsets)


def quantize_graph_matmuls(graph_path: Path, bits: int, block_size: int, symmetric: bool, accuracy_level: int) -> int:
    """Rewrite, in place, every MatMul of an ONNX graph whose B is a constant 2-D weight into a
    MatMulNBits over block-quantized weights; returns how many were rewritten.

    For graphs we do not build ourselves (optimum's encoders): activations and everything else
    stay as exported. A weight whose K is not a whole number of blocks keeps its fp32 MatMul.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(graph_path))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes, rewritten, replaced = [], 0, set()
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or weight.dims[0] % block_size or readers[weight.name] != 1:
            nodes.append(node)
            continue
        qw = quantize_blocks(numpy_helper.to_array(weight).astype(np.float32), bits, block_size, symmetric)
        base = f"{weight.name}.q{bits}"
        tensors = [numpy_helper.from_array(qw.packed, f"{base}.blocks"), numpy_helper.from_array(qw.scales, f"{base}.scales")]
        if qw.zero_points is not None:
            tensors.append(numpy_helper.from_array(qw.zero_points, f"{base}.zero_points"))
        graph.initializer.extend(tensors)
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], *(t.name for t in tensors)], list(node.output), f"{node.name}/nbits", domain="com.microsoft",
            K=qw.k, N=qw.n, bits=bits, block_size=block_size, accuracy_level=accuracy_level,
        ))  # fmt: skip
        replaced.add(weight.name)
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if init.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(graph_path))
    return rewritten
