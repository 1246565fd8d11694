"""Block carriers: GGUF blocks re-laid for MatMulNBits give back exactly the file's weights."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from export.blocks import carry, dequantize_carried, stack
from export.budget import GIB, estimate, parse_size
from export.errors import ExportError
from export.tensors import RawBlocks

RNG = np.random.default_rng(7)


def raw(kind: str, rows: int = 8, columns: int = 96) -> tuple[RawBlocks, np.ndarray]:
    """Random floats [rows, columns] quantized by the gguf package, and what it de-quantizes them to."""
    qtype = GGMLQuantizationType[kind]
    data = quantize(RNG.standard_normal((rows, columns)).astype(np.float32), qtype)
    return RawBlocks(kind, data, columns), dequantize(data, qtype)


@pytest.mark.parametrize(("kind", "bits", "has_minimums"), [("Q4_0", 4, False), ("Q4_1", 4, True), ("Q8_0", 8, False)])
def test_carried_blocks_are_the_files_weights(kind, bits, has_minimums):
    blocks, floats = raw(kind)
    carried = carry(blocks)
    assert carried is not None and carried.bits == bits and (carried.minimums is not None) == has_minimums
    assert carried.packed.shape == (8, 3, 32 * bits // 8) and carried.scales.dtype == np.float16
    np.testing.assert_allclose(dequantize_carried(carried), floats.T, rtol=1e-6, atol=1e-7)  # W [K, N]


def test_the_nibble_order_is_matmulnbits():
    """GGUF puts elements j and j+16 in byte j; MatMulNBits wants elements 2j and 2j+1."""
    data = np.zeros((1, 20), dtype=np.uint8)
    data[0, 0:2] = np.array([1.0], dtype=np.float16).view(np.uint8)  # d = 1, m = 0
    data[0, 4:] = np.arange(16, dtype=np.uint8) | (np.uint8(15) - np.arange(16, dtype=np.uint8)) << 4
    carried = carry(RawBlocks("Q4_1", data, 32))
    assert carried is not None
    expected = np.concatenate([np.arange(16), 15 - np.arange(16)]).astype(np.float32)  # q, with m = 0 and d = 1
    np.testing.assert_array_equal(dequantize_carried(carried)[:, 0], expected)


def test_stacked_parts_keep_their_rows_and_refuse_mixed_kinds():
    (a, fa), (b, fb) = raw("Q4_1", rows=4), raw("Q4_1", rows=6)
    parts = [carry(a), carry(b)]
    assert all(p is not None for p in parts)
    whole = stack([p for p in parts if p is not None])
    assert whole is not None and whole.n == 10
    np.testing.assert_allclose(dequantize_carried(whole), np.concatenate([fa, fb]).T, rtol=1e-6, atol=1e-7)
    mixed = [carry(raw("Q4_1")[0]), carry(raw("Q4_0")[0])]
    assert stack([p for p in mixed if p is not None]) is None


def test_types_not_carried():
    assert carry(RawBlocks("Q6_K", np.zeros((2, 210), dtype=np.uint8), 256)) is None
    assert carry(RawBlocks("Q4_1", np.zeros((2, 30), dtype=np.uint8), 48)) is None  # not whole blocks


class Config:
    hidden_size, num_attention_heads, num_key_value_heads, head_dim = 2048, 32, 8, 64
    intermediate_size, num_hidden_layers, vocab_size = 8192, 16, 49152


def test_the_estimate_scales_with_the_source_not_the_fp32_model():
    carried = estimate(Config(), 717_000_000, "int4", carried=True, tied=True, max_context=2048)
    fp32 = estimate(Config(), 717_000_000, "fp32", carried=False, tied=True, max_context=2048)
    # Within 10% of issue 27's bound (2 x the GGUF + 1 GiB): the estimate errs above the measured 2.31 GB.
    assert carried.engine == 717_000_000 and 2.31e9 < carried.memory < 1.1 * (2 * 717_000_000 + GIB)
    assert fp32.engine > 4e9 and fp32.memory > 2 * carried.memory and fp32.disk > fp32.engine


@pytest.mark.parametrize(("text", "size"), [("2G", 2 * GIB), ("1536M", 1536 << 20), ("3.5GiB", int(3.5 * GIB)), ("800000000", 800_000_000), ("64mb", 64 << 20)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1G", "0"])
def test_bad_sizes(text):
    with pytest.raises(ExportError, match="memory-limit"):
        parse_size(text)
