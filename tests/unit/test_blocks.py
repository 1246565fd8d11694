"""Block carriers: GGUF blocks re-laid for MatMulNBits give back exactly the file's weights."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from export.blocks import CarriedBlocks, carry, dequantize_carried, offsets, stack
from export.budget import GIB, estimate, parse_size
from export.errors import ExportError
from export.tensors import RawBlocks
from tests.gguf_blocks import quantize

RNG = np.random.default_rng(7)
EVERY_TYPE = [("Q4_0", 4, 32, False), ("Q4_1", 4, 32, True), ("Q5_0", 8, 32, False), ("Q5_1", 8, 32, True), ("Q8_0", 8, 32, False),
              ("Q4_K", 4, 32, True), ("Q5_K", 8, 32, True), ("Q6_K", 8, 16, False)]  # fmt: skip


def raw(kind: str, rows: int = 8, columns: int = 512) -> tuple[RawBlocks, np.ndarray]:
    """Random floats [rows, columns] quantized (by the gguf package, or tests/gguf_blocks.py for the
    K-quants), and what the gguf package de-quantizes them to."""
    data = quantize(RNG.standard_normal((rows, columns)).astype(np.float32) * 0.05, kind)
    return RawBlocks(kind, data, columns), dequantize(data, GGMLQuantizationType[kind])


def random_blocks(kind: str, rows: int = 6, columns: int = 512) -> np.ndarray:
    """Any bytes with finite fp16 scales are valid blocks: every integer and scale pattern."""
    per_block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    data = RNG.integers(0, 256, size=(rows, columns // per_block, size), dtype=np.uint8)
    where = {"Q6_K": [208]}.get(kind, [0, 2] if kind in ("Q4_1", "Q5_1", "Q4_K", "Q5_K") else [0])
    for at in where:  # finite fp16 d (and m/dmin) of any sign and magnitude, subnormals included
        values = (RNG.standard_normal(data.shape[:2]) * 10.0 ** RNG.integers(-7, 3, size=data.shape[:2])).astype(np.float16)
        data[..., at : at + 2] = values.reshape(*data.shape[:2], 1).view(np.uint8)
    return data.reshape(rows, -1)


@pytest.mark.parametrize(("kind", "bits", "block_size", "has_minimums"), EVERY_TYPE)
def test_carried_blocks_are_the_files_weights_bit_for_bit(kind, bits, block_size, has_minimums):
    blocks, floats = raw(kind)
    carried = carry(blocks)
    assert carried is not None and (carried.bits, carried.block_size) == (bits, block_size) and (carried.minimums is not None) == has_minimums
    assert carried.packed.shape == (8, 512 // block_size, block_size * bits // 8)
    assert carried.scales.dtype == (np.float32 if kind.endswith("_K") else np.float16)  # the file's d, or d·sc
    assert np.array_equal(dequantize_carried(carried), floats.T)  # W [K, N]


@pytest.mark.parametrize("kind", [t[0] for t in EVERY_TYPE])
def test_any_valid_blocks_are_carried_bit_for_bit(kind):
    data = random_blocks(kind)
    carried = carry(RawBlocks(kind, data, 512))
    assert carried is not None
    assert np.array_equal(dequantize_carried(carried), dequantize(data, GGMLQuantizationType[kind]).T)


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K"])
def test_our_k_quantizers_write_blocks_gguf_reads_back(kind):
    floats = RNG.standard_normal((4, 512)).astype(np.float32)
    back = dequantize(quantize(floats, kind), GGMLQuantizationType[kind])
    assert np.abs(back - floats).max() < {"Q4_K": 0.35, "Q5_K": 0.18, "Q6_K": 0.08}[kind] * np.abs(floats).max()


def test_offsets_that_are_not_fp32_values_fall_back_to_zero_points():
    """m + 8d is not always an fp32 value (|m| and 8d 2^14 apart): such a matrix keeps t = m, with
    explicit zero points 0 (4-bit), and stays exact."""
    data = random_blocks("Q4_1", rows=2, columns=64)
    blocks = data.reshape(2, 2, 20)
    blocks[..., 0:2] = np.array([2.0**-14], dtype=np.float16).view(np.uint8)  # d
    blocks[..., 2:4] = np.array([1.0 + 2.0**-10], dtype=np.float16).view(np.uint8)  # m + 8d = 1 + 2^-10 + 2^-11: an fp32 value
    blocks[0, 0, 2:4] = np.array([2.0**13 + 8], dtype=np.float16).view(np.uint8)  # 2^13 + 8 + 2^-11: 25 significant bits
    carried = carry(RawBlocks("Q4_1", data, 64))
    assert carried is not None and carried.centre == 0 and carried.zero_point == 0 and carried.zero_points is not None
    assert np.array_equal(dequantize_carried(carried), dequantize(data, GGMLQuantizationType.Q4_1).T)
    centred = carry(raw("Q4_1")[0])
    assert centred is not None and centred.centre == 8 and centred.zero_points is None  # the usual case: no zero points


def test_the_nibble_order_is_matmulnbits():
    """GGUF puts elements j and j+16 in byte j; MatMulNBits wants elements 2j and 2j+1."""
    data = np.zeros((1, 20), dtype=np.uint8)
    data[0, 0:2] = np.array([1.0], dtype=np.float16).view(np.uint8)  # d = 1, m = 0
    data[0, 4:] = np.arange(16, dtype=np.uint8) | (np.uint8(15) - np.arange(16, dtype=np.uint8)) << 4
    carried = carry(RawBlocks("Q4_1", data, 32))
    assert carried is not None
    expected = np.concatenate([np.arange(16), 15 - np.arange(16)]).astype(np.float32)  # q, with m = 0 and d = 1
    np.testing.assert_array_equal(dequantize_carried(carried)[:, 0], expected)
    assert carried.packed[0, 0, 0] == 0 | (1 << 4)  # elements 0 and 1 (q 0 and 1) in byte 0


def test_stacked_parts_keep_their_rows_and_refuse_mixed_kinds():
    (a, fa), (b, fb) = raw("Q4_1", rows=4), raw("Q4_1", rows=6)
    parts = [carry(a), carry(b)]
    assert all(p is not None for p in parts)
    whole = stack([p for p in parts if p is not None])
    assert whole is not None and whole.n == 10
    assert np.array_equal(dequantize_carried(whole), np.concatenate([fa, fb]).T)
    mixed = [carry(raw("Q4_K")[0]), carry(raw("Q6_K")[0])]
    assert stack([p for p in mixed if p is not None]) is None


@pytest.mark.parametrize("kind", ["Q4_1", "Q5_1", "Q4_K", "Q5_K"])
def test_parts_with_centred_and_uncentred_offsets_stack_exactly(kind):
    centred = random_blocks(kind, rows=3)
    off = random_blocks(kind, rows=2)
    per_block = 256 if kind.endswith("_K") else 32
    view = off.reshape(2, -1, off.shape[1] // (512 // per_block))
    view[..., 0:2] = np.array([2.0**-20], dtype=np.float16).view(np.uint8)  # d, tiny beside m (or dmin·m) = O(1e3):
    view[..., 2:4] = np.array([1111.0], dtype=np.float16).view(np.uint8)  # m + centre·d needs more than 24 bits
    a, b = carry(RawBlocks(kind, centred, 512)), carry(RawBlocks(kind, off, 512))
    assert a is not None and b is not None and b.centre == 0
    whole = stack([a, b])
    assert whole is not None and whole.centre == 0
    expected = np.concatenate([dequantize(x, GGMLQuantizationType[kind]) for x in (centred, off)]).T
    assert np.array_equal(dequantize_carried(whole), expected)


def matmulnbits(x: np.ndarray, blocks: CarriedBlocks) -> np.ndarray:
    """x @ W by ONNX Runtime's MatMulNBits over the carried blocks (accuracy level 0: fp32 math), plus the offsets."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(blocks.packed, "B"), numpy_helper.from_array(blocks.scales.astype(np.float32).reshape(-1), "S")]
    if blocks.zero_points is not None:
        inits.append(numpy_helper.from_array(blocks.zero_points, "Z"))
    node = helper.make_node(
        "MatMulNBits", ["x", *(t.name for t in inits)], ["y"], domain="com.microsoft",
        K=blocks.k, N=blocks.n, bits=blocks.bits, block_size=blocks.block_size, accuracy_level=0,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    t = offsets(blocks)
    if t is not None:
        y = y + x.reshape(x.shape[0], -1, blocks.block_size).sum(axis=2) @ t.T
    return y


@pytest.mark.parametrize("kind", [t[0] for t in EVERY_TYPE] + ["Q4_1 with zero points"])
def test_onnx_runtime_reads_the_layout_as_we_do(kind):
    """MatMulNBits itself (nibble order, 8-bit and 16-weight blocks, zero points) against x @ W of the file's floats."""
    if kind == "Q4_1 with zero points":
        data = random_blocks("Q4_1", rows=8)
        data.reshape(8, -1, 20)[0, 0, 2:4] = np.array([4096.0], dtype=np.float16).view(np.uint8)
        data.reshape(8, -1, 20)[0, 0, 0:2] = np.array([2.0**-20], dtype=np.float16).view(np.uint8)
        blocks, floats = RawBlocks("Q4_1", data, 512), dequantize(data, GGMLQuantizationType.Q4_1)
    else:
        blocks, floats = raw(kind)
    carried = carry(blocks)
    assert carried is not None and (kind != "Q4_1 with zero points" or carried.zero_points is not None)
    x = RNG.standard_normal((3, 512)).astype(np.float32)
    expected = x.astype(np.float64) @ floats.T.astype(np.float64)
    np.testing.assert_allclose(matmulnbits(x, carried), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_types_not_carried():
    assert carry(RawBlocks("Q3_K", np.zeros((2, 110), dtype=np.uint8), 256)) is None
    assert carry(RawBlocks("IQ4_XS", np.zeros((2, 136), dtype=np.uint8), 256)) is None
    assert carry(RawBlocks("Q4_1", np.zeros((2, 30), dtype=np.uint8), 48)) is None  # not whole blocks
    assert carry(RawBlocks("Q4_K", np.zeros((2, 72), dtype=np.uint8), 128)) is None


class Config:
    hidden_size, num_attention_heads, num_key_value_heads, head_dim = 2048, 32, 8, 64
    intermediate_size, num_hidden_layers, vocab_size = 8192, 16, 49152


def test_the_estimate_scales_with_the_source_not_the_fp32_model():
    carried = estimate(Config(), 717_000_000, "int4", carried=True, tied=True, max_context=2048)
    fp32 = estimate(Config(), 717_000_000, "fp32", carried=False, tied=True, max_context=2048)
    # Within 10% of issue 27's bound (2 x the GGUF + 1 GiB): the estimate errs above the measured 2.31 GB.
    assert carried.engine == 717_000_000 and 2.31e9 < carried.memory < 1.1 * (2 * 717_000_000 + GIB)
    assert fp32.engine > 4e9 and fp32.memory > 2 * carried.memory and fp32.disk > fp32.engine


def test_wider_carried_types_grow_the_estimated_engine():
    """A Q6_K file's blocks are carried as 8-bit blocks of 16 with fp32 scales: 40 bytes per 32
    weights in the engine against the file's 26.25 (CARRIED_FILE_TYPES)."""
    from export.budget import CARRIED_FILE_TYPES

    q6_k = estimate(Config(), 1_000_000_000, "int4", carried=True, tied=True, max_context=2048, growth=CARRIED_FILE_TYPES[18])
    assert q6_k.engine == int(1e9 * 40 / 26.25) and CARRIED_FILE_TYPES[3] == 1.0


@pytest.mark.parametrize(("text", "size"), [("2G", 2 * GIB), ("1536M", 1536 << 20), ("3.5GiB", int(3.5 * GIB)), ("800000000", 800_000_000), ("64mb", 64 << 20)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1G", "0"])
def test_bad_sizes(text):
    with pytest.raises(ExportError, match="memory-limit"):
        parse_size(text)
