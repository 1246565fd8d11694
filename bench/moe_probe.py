"""Is ONNX Runtime's CPU mixture-of-experts kernel practical for Qwen3-MoE? One layer, timed.

QMoE (4-bit experts, SwiGLU, top-8 of 128) at Qwen3-30B-A3B's layer shape, against two
MatMulNBits reading the same active weights a token needs (8 experts' gate|up and down, int4
blocks of 32): the bandwidth bound a MoE kernel should approach. 2 threads, batch 1 and 8.

    python bench/moe_probe.py

export/gqa_builder.py's refusal of MoE families quotes a run (docs/exporting.md has it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

EXPERTS, HIDDEN, INTER, TOP_K = 128, 2048, 768, 8  # Qwen3-30B-A3B's MoE layer
RNG = np.random.default_rng(0)


def session(nodes: list, inputs: list, initializers: list) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "probe", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def packed(name: str, shape: tuple[int, ...]) -> object:
    return numpy_helper.from_array(RNG.integers(0, 255, shape, dtype=np.uint8), name)


def scales(name: str, shape: tuple[int, ...]) -> object:
    return numpy_helper.from_array((RNG.random(shape) * 0.01).astype(np.float32), name)


def build() -> tuple[ort.InferenceSession, ort.InferenceSession]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, HIDDEN])
    router = helper.make_tensor_value_info("router", TensorProto.FLOAT, [None, EXPERTS])
    moe_weights = [
        packed("w1", (EXPERTS, 2 * INTER, HIDDEN // 2)), scales("s1", (EXPERTS, 2 * INTER)),
        packed("w2", (EXPERTS, HIDDEN, INTER // 2)), scales("s2", (EXPERTS, HIDDEN)),
    ]  # fmt: skip
    moe = session(
        [helper.make_node(
            "QMoE", ["x", "router", "w1", "s1", "", "w2", "s2"], ["y"], domain="com.microsoft",
            k=TOP_K, activation_type="swiglu", swiglu_fusion=1, expert_weight_bits=4, normalize_routing_weights=1,
        )],
        [x, router], moe_weights,
    )  # fmt: skip
    up, down = TOP_K * 2 * INTER, TOP_K * INTER
    dense_weights = [
        packed("up.q", (up, HIDDEN // 32, 16)), scales("up.s", (up * HIDDEN // 32,)),
        packed("down.q", (HIDDEN, down // 32, 16)), scales("down.s", (HIDDEN * down // 32,)),
        numpy_helper.from_array(np.array([0]), "zero"), numpy_helper.from_array(np.array([down]), "half"), numpy_helper.from_array(np.array([-1]), "last"),
    ]  # fmt: skip
    dense = session(
        [
            helper.make_node("MatMulNBits", ["x", "up.q", "up.s"], ["h"], domain="com.microsoft", K=HIDDEN, N=up, bits=4, block_size=32, accuracy_level=4),
            helper.make_node("Slice", ["h", "zero", "half", "last"], ["h2"]),
            helper.make_node("MatMulNBits", ["h2", "down.q", "down.s"], ["y"], domain="com.microsoft", K=down, N=HIDDEN, bits=4, block_size=32, accuracy_level=4),
        ],
        [x], dense_weights,
    )  # fmt: skip
    return moe, dense


def milliseconds(run: Callable[[], object], seconds: float = 3.0) -> float:
    run()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        run()
        count += 1
    return (time.perf_counter() - start) / count * 1e3


def main() -> None:
    moe, dense = build()
    print(f"active int4 weights per token per layer: {TOP_K * 3 * HIDDEN * INTER / 2 / 1e6:.1f} MB")
    for rows in (1, 8):
        feeds = {"x": RNG.standard_normal((rows, HIDDEN)).astype(np.float32), "router": RNG.standard_normal((rows, EXPERTS)).astype(np.float32)}
        qmoe = milliseconds(lambda feeds=feeds: moe.run(None, feeds))
        bound = milliseconds(lambda feeds=feeds: dense.run(None, {"x": feeds["x"]}))
        # At 8 rows the tokens route to up to 64 experts, so QMoE reads more than the 8 experts the bound reads.
        print(f"rows {rows}: QMoE {qmoe:.1f} ms, MatMulNBits on one token's active bytes {bound:.1f} ms per layer step ({qmoe / bound:.1f}x)")


if __name__ == "__main__":
    main()
