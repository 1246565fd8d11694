"""Block quantization for MatMulNBits: layouts, error bounds, and carrying GGUF blocks exactly.

The layouts are checked against ONNX Runtime itself: a one-node MatMulNBits graph must
compute x @ dequantize(W), so a packing mistake cannot hide behind a matching inverse.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.quantize import SOURCE_BLOCKS_FALLBACK, WeightQuantization, dequantize, quantize_blocks, quantize_hqq, quantize_matrix, quantize_mse, recover_q4_1

RNG = np.random.default_rng(0)


def matmul_nbits(x: np.ndarray, qw, accuracy_level: int = 0) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(qw.packed, "B"), numpy_helper.from_array(qw.scales, "S")]
    inputs = ["X", "B", "S"]
    if qw.zero_points is not None:
        inits.append(numpy_helper.from_array(qw.zero_points, "Z"))
        inputs.append("Z")
    node = helper.make_node(
        "MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=qw.k, N=qw.n, bits=qw.bits, block_size=qw.block_size, accuracy_level=accuracy_level
    )
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, qw.k])], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, qw.n])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k", [64, 80])  # 80: K padded to whole blocks; odd block count for 4-bit zero points
def test_onnx_runtime_computes_x_times_the_dequantized_weight(bits, symmetric, k):
    w = RNG.standard_normal((k, 24)).astype(np.float32)
    qw = quantize_blocks(w, bits, 16, symmetric)
    x = RNG.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_allclose(matmul_nbits(x, qw), x @ dequantize(qw), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_rounding_error_is_at_most_half_a_step(bits):
    w = RNG.standard_normal((128, 32)).astype(np.float32)
    qw = quantize_blocks(w, bits, 32, symmetric=False)
    step = qw.scales.reshape(32, 4).T.repeat(32, axis=0)  # [K, N]: each weight's block scale
    assert np.all(np.abs(dequantize(qw) - w) <= step / 2 + 1e-6)


def q4_1_matrix(k: int, n: int) -> np.ndarray:
    """A matrix as transformers de-quantizes a GGUF Q4_1 tensor: w = d*q + m per block of 32."""
    q = RNG.integers(0, 16, size=(n, k // 32, 32)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # llama.cpp's quantizer puts min and max at 0 and 15
    d = RNG.uniform(0.001, 0.05, size=(n, k // 32, 1)).astype(np.float16).astype(np.float32)
    m = RNG.uniform(-0.4, 0.0, size=(n, k // 32, 1)).astype(np.float16).astype(np.float32)
    return (d * q + m).reshape(n, k).T.copy()


def test_q4_1_blocks_are_carried_over_exactly():
    w = q4_1_matrix(96, 40)
    qw, offsets = recover_q4_1(w)
    x = RNG.standard_normal((5, 96)).astype(np.float32)
    block_sums = x.reshape(5, 3, 32).sum(axis=2)
    exact = matmul_nbits(x, qw, accuracy_level=1) + block_sums @ offsets
    np.testing.assert_allclose(exact, x @ w, rtol=1e-5, atol=1e-5)
    # Round to nearest of the same floats is not exact: the zero point is an integer.
    rtn = quantize_blocks(w, 4, 32, symmetric=False)
    assert np.abs(dequantize(rtn) - w).max() > 1e-3


def test_weights_off_the_4_bit_grid_are_not_mistaken_for_q4_1():
    assert recover_q4_1(RNG.standard_normal((64, 8)).astype(np.float32)) is None
    assert recover_q4_1(q4_1_matrix(64, 8)[:48]) is None  # K not a whole number of blocks


def test_options_are_checked():
    with pytest.raises(ValueError, match="bits"):
        WeightQuantization(bits=3).check()
    with pytest.raises(ValueError, match="power of two"):
        WeightQuantization(block_size=24).check()
    with pytest.raises(ValueError, match="source-blocks"):
        WeightQuantization(bits=8, method="source-blocks").check()
    assert WeightQuantization(method="source-blocks").head() == WeightQuantization(8, 32, True, 4, "int8", "source-blocks")
    assert WeightQuantization(lm_head="fp32").head() is None


def with_outliers(k: int, n: int) -> np.ndarray:
    """Gaussian weights with 1% outliers of 6-10x the usual magnitude, as trained matrices have."""
    w = RNG.standard_normal((k, n)).astype(np.float32) * 0.02
    hot = RNG.random((k, n)) < 0.01
    w[hot] *= RNG.uniform(6, 10, size=int(hot.sum())).astype(np.float32)
    return w


def rebuilt(qw, offsets) -> np.ndarray:
    """W [K, N] as the builder's graph computes it: MatMulNBits' weight plus any per-block offsets."""
    w = dequantize(qw)
    return w if offsets is None else w + np.repeat(offsets, qw.block_size, axis=0)


def relative_error(w: np.ndarray, approx: np.ndarray) -> float:
    return float(((approx - w) ** 2).sum() / (w**2).sum())


@pytest.mark.parametrize("method", ["mse", "hqq"])
def test_onnx_runtime_computes_what_the_new_quantizers_reconstruct(method):
    w = with_outliers(96, 40)
    qw, offsets = quantize_matrix(w, WeightQuantization(method=method))
    assert (offsets is not None) == (method == "hqq")
    assert qw.zero_points is None if method == "hqq" else qw.zero_points is not None  # hqq: MatMulNBits without zero points
    x = RNG.standard_normal((5, 96)).astype(np.float32)
    y = matmul_nbits(x, qw, accuracy_level=1)
    if offsets is not None:
        y = y + x.reshape(5, 3, 32).sum(axis=2) @ offsets  # what the builder's add_offsets computes
    np.testing.assert_allclose(y, x @ rebuilt(qw, offsets), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block_size", [32, 128])
def test_mse_and_hqq_beat_round_to_nearest_where_outliers_stretch_the_blocks(block_size):
    w = with_outliers(512, 96)
    x = RNG.standard_normal((256, 512)).astype(np.float32)
    rtn = dequantize(quantize_blocks(w, 4, block_size, symmetric=False))
    rtn_error, rtn_out = relative_error(w, rtn), relative_error(x @ w, x @ rtn)
    for method, margin in (("mse", 0.95), ("hqq", 0.95)):
        approx = rebuilt(*quantize_matrix(w, WeightQuantization(block_size=block_size, method=method)))
        assert relative_error(w, approx) < margin * rtn_error, method
        assert relative_error(x @ w, x @ approx) < margin * rtn_out, method


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (8, False), (8, True)])
def test_mse_is_never_worse_than_round_to_nearest(bits, symmetric):
    w = with_outliers(256, 48)
    rtn = dequantize(quantize_blocks(w, bits, 32, symmetric))
    mse = dequantize(quantize_mse(w, bits, 32, symmetric))
    per_block = lambda a: ((a - w) ** 2).reshape(8, 32, 48).sum(axis=1)  # noqa: E731
    assert np.all(per_block(mse) <= per_block(rtn) * (1 + 1e-5) + 1e-12)
    assert relative_error(w, mse) < relative_error(w, rtn)


def test_hqq_lands_on_a_q4_1_grid_exactly():
    w = q4_1_matrix(96, 40)
    approx = rebuilt(*quantize_hqq(w, 4, 32))
    np.testing.assert_allclose(approx, w, atol=1e-5)
    assert relative_error(w, dequantize(quantize_blocks(w, 4, 32, False))) > 1e-3  # where rtn is not


def test_hqq_falls_back_to_integer_zero_points_where_k_is_not_whole_blocks():
    w = with_outliers(80, 16)  # 80 = 2.5 blocks of 32: the block sums the offsets need do not exist
    qw, offsets = quantize_matrix(w, WeightQuantization(method="hqq"))
    assert offsets is None and qw.zero_points is not None and qw.k == 80
    with pytest.raises(ValueError, match="whole number of blocks"):
        quantize_hqq(w, 4, 32)


def test_the_quantizer_choice_is_validated():
    for method in ("rtn", "hqq", "mse", "source-blocks"):
        WeightQuantization(method=method).check()
    with pytest.raises(ValueError, match="quantization method must be one of"):
        WeightQuantization(method="gptq").check()
    from export.errors import ExportError
    from export.options import ExportOptions

    assert ExportOptions(precision="int4", quant_method="hqq").quantization.method == "hqq"
    ExportOptions(precision="int4", quant_method="mse").check()
    with pytest.raises(ExportError, match="quantization method"):
        ExportOptions(precision="int4", quant_method="awq").check()


def test_source_blocks_quantizes_what_it_cannot_carry_with_the_folder_default():
    w = with_outliers(96, 16)  # genuine floats: no block grid to carry
    qw, offsets = quantize_matrix(w, WeightQuantization(method="source-blocks"))
    assert SOURCE_BLOCKS_FALLBACK == "hqq" and offsets is not None and qw.zero_points is None
    np.testing.assert_allclose(rebuilt(qw, offsets), rebuilt(*quantize_hqq(w, 4, 32)))
    # int8 (a GGUF's Q8_0 head) keeps symmetric round to nearest, which carries Q8_0 exactly.
    head = WeightQuantization(method="source-blocks").head()
    qw, offsets = quantize_matrix(w, head)
    assert offsets is None and qw.bits == 8
    np.testing.assert_array_equal(qw.packed, quantize_blocks(w, 8, 32, True).packed)
