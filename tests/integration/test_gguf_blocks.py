"""Every common GGUF block type is carried into the int4 engine exactly (export/blocks.py): the
weights the engine computes with, rebuilt from its initializers as MatMulNBits and
GatherBlockQuantized define them, are the gguf package's de-quantized floats, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.options import ExportOptions
from export.pipeline import export_model
from tests.gguf_blocks import embedding_rows, engine_weights, q4_k_m_types, write_gguf
from tests.tiny_models import make_tiny_llama

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
# The K-quants' super-blocks are 256 inputs: every matrix's K a multiple of 256.
SHAPE = {"hidden_size": 256, "intermediate_size": 512, "head_dim": 64}
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("kq") / "tiny-llama-256", **SHAPE)


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("kq-untied") / "tiny-llama-256", tie=False, **SHAPE)


def gguf_floats(gguf: Path, heads: int, kv_heads: int) -> dict[str, np.ndarray]:
    """gguf.dequantize of every tensor, by GGUF name, q/k rows back in the Hugging Face order."""
    from gguf import GGUFReader, dequantize

    def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:  # inverse of llama.cpp's converter permute
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    out = {}
    for t in GGUFReader(str(gguf)).tensors:
        w = dequantize(t.data, t.tensor_type)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, kv_heads)
        out[t.name] = w
    return out


def hf_parts(weight: str) -> list[str]:
    """The GGUF tensors behind an engine weight (a fused q|k|v or gate|up, or one matrix)."""
    if weight == "lm_head.weight_t":
        return ["output.weight"]
    layer, rest = weight.removeprefix("model.layers.").split(".", 1)
    rest = rest.removesuffix(".weight")
    fused = {"self_attn.qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "mlp.gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"]}
    return [f"blk.{layer}.{GGUF_NAMES[part]}.weight" for part in fused.get(rest, [rest])]


def check_bit_for_bit(directory: Path, gguf: Path, tied: bool) -> list[str]:
    """Every MatMulNBits and the embedding lookup against gguf.dequantize; returns the matrices checked."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(directory / "model.onnx"), load_external_data=True)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    floats = gguf_floats(gguf, 4, 2)
    if tied:
        floats["output.weight"] = floats["token_embd.weight"]
    checked = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        weight = "lm_head.weight_t" if node.name.startswith("lm_head") else node.input[1].removesuffix(".quant")
        expected = np.concatenate([floats[name] for name in hf_parts(weight)]).T
        assert np.array_equal(engine_weights(model, arrays, node.name), expected), weight
        checked.append(weight)
    assert np.array_equal(embedding_rows(model, arrays), floats["token_embd.weight"])
    return checked


def near_fp32(parity: dict) -> None:
    """The weights are exact: what is left is accuracy_level 4's int8 activations (on these random
    tiny models, whose ~600 logits are close together: top-1 0.88-0.91, mean KL about 0.03)."""
    versus = parity["versus_fp32"]
    assert versus["top1_agreement"] > 0.8 and versus["mean_kl"] < 0.1, versus


def export(gguf: Path, out: Path):
    return export_model(str(gguf), out, ExportOptions(precision="int4", max_context=256, parity_tokens=4))


@pytest.mark.parametrize("kind", TYPES)
def test_each_type_alone_is_carried_bit_for_bit(kind, tied_dir, tmp_path):
    gguf = write_gguf(tmp_path / f"tiny-{kind}.gguf", tied_dir, lambda name: kind)
    result = export(gguf, tmp_path / "e")
    blocks = result.parity["source_blocks"]
    assert blocks["rounded"] == [] and len(blocks["carried_exactly"]) == 4 * 2 + 2  # the projections, the head, the embedding
    checked = check_bit_for_bit(result.directory, gguf, tied=True)
    assert len(checked) == 4 * 2 + 1
    near_fp32(result.parity)


def test_a_q4_k_m_mix_is_carried_with_its_parts_apart(tied_dir, tmp_path):
    """Q4_K_M's mix (tests/gguf_blocks.py q4_k_m_types): q and k in Q4_K beside v in Q6_K, gate in
    Q4_K beside up in Q8_0 are projected one MatMulNBits per part; parts of one type stay fused."""
    gguf = write_gguf(tmp_path / "tiny-q4_k_m.gguf", tied_dir, q4_k_m_types)
    result = export(gguf, tmp_path / "e")
    blocks = result.parity["source_blocks"]
    assert blocks["rounded"] == []
    carried = set(blocks["carried_exactly"])
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.up_proj.weight"} <= carried
    assert "model.layers.0.mlp.gate_up_proj.weight" in carried and "model.layers.1.mlp.gate_up_proj.weight" not in carried
    checked = check_bit_for_bit(result.directory, gguf, tied=True)
    assert len(checked) == (3 + 1 + 1 + 1) + (3 + 1 + 2 + 1) + 1  # q, k, v apart, o, gate|up (fused in layer 0 only), down; the head
    near_fp32(result.parity)


def test_an_untied_k_quant_embedding_and_head(untied_dir, tmp_path):
    """A Q4_K embedding (a minimum: its offsets are gathered beside the rows) and a Q6_K head."""

    def types(name: str) -> str:
        return {"token_embd.weight": "Q4_K", "output.weight": "Q6_K"}.get(name, q4_k_m_types(name))

    gguf = write_gguf(tmp_path / "tiny-untied.gguf", untied_dir, types)
    result = export(gguf, tmp_path / "e")
    assert result.parity["source_blocks"]["rounded"] == []
    assert "lm_head.weight_t" in check_bit_for_bit(result.directory, gguf, tied=False)
    near_fp32(result.parity)


def test_types_not_carried_are_rounded_and_listed(tied_dir, tmp_path):
    """Q3_K (not carried) is re-rounded to int4, and parity.json says which matrices were."""

    def types(name: str) -> str:
        return "Q3_K" if name == "blk.1.ffn_down.weight" else q4_k_m_types(name)

    gguf = write_gguf(tmp_path / "tiny-q3_k.gguf", tied_dir, types)
    result = export(gguf, tmp_path / "e")
    assert result.parity["source_blocks"]["rounded"] == ["model.layers.1.mlp.down_proj.weight"]
