"""Block quantization for MatMulNBits: layouts, error bounds, and carrying GGUF blocks exactly.

The layouts are checked against ONNX Runtime itself: a one-node MatMulNBits graph must
compute x @ dequantize(W), so a packing mistake cannot hide behind a matching inverse.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.quantize import WeightQuantization, dequantize, quantize_blocks, recover_q4_1

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
