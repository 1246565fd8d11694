"""The streaming export: weights a tensor at a time from the source, the reference a layer at a time."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import quantize
from export.blocks import CarriedBlocks, dequantize_carried
from export.budget import GIB
from export.errors import InsufficientResourcesError
from export.options import ExportOptions
from export.pipeline import export_model
from export.sources import inspect_path
from tests.tiny_models import make_tiny_llama, write_tiny_llama_gguf

# sha256 of model.onnx and model.onnx.data from the builder that read the whole PyTorch model
# (commit 132ce8f), for the tiny models of tests/tiny_models.py with max_context 256: the
# streaming builder must write the very same bytes.
WHOLE_MODEL_BUILDER = {
    "llama-fp32": ("cd91d28300adfd9d4927120ccfd92ca763caf04e04be57371c3ea4133ddffa82", "8fac583b291011906b465b7922c939079e55dec2d0204c27d326cec9d98daeec"),
    "llama-int8": ("7205018d9a3f3db2d4532d0e137fe4f3f52a8ae1e992a71e6fc736895ccd9da0", "d489237c7bf17b74e4e654c183330e56b9ef62c57fe95d9d6622f88723f54933"),
    "llama-int4": ("5d0ff8d90d837535b3d432e418394522f6edcebde324e622a911d2cf99dda037", "e338ac248295bbc35d0e74a5b7363f5c6e5ab7abdc9811ee22ec8f173750dbea"),
    "qwen2-fp32": ("f27161a32f0217ccd41b821593483b749431fd8e6f8ed0b5366fd5ed5f73df15", "073a181da5b0aed8a25717e8fbb7d6d4f34769f84e452574ee7de347e9c04456"),
    "qwen2-int8": ("323d12445d678f2e6cb71af700ab4f9a23051cd7db9d90e9e9e9ef5522b7929f", "8278c5b7bb2f95c776cad7db9b5f0aec0786d6ff73f67aecb3d77870b0c8f74f"),
    "qwen2-int4": ("7853339c5a6893d8b733ad88e92bf969dd611f64acb3dcc7ff60056d8ca7b5ea", "92f3d2e5bfd947f4cf81dd57722d3ea00bbd10f5217fb1a26527c3ea2cf0c466"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def initializers(directory: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(directory / "model.onnx"), load_external_data=True)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("qwen2") / "tiny-qwen2", model_type="qwen2", tie=False)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_folder_exports_to_the_bytes_the_whole_model_builder_wrote(family, precision, tiny_llama_dir, tiny_qwen2_dir, tmp_path, monkeypatch):
    # The whole-model builder rounded a folder's int4 matrices to nearest (its only quantizer):
    # the same choice here, so the bytes say the streaming builder changed nothing else.
    monkeypatch.setattr(quantize, "SOURCE_BLOCKS_FALLBACK", "rtn")
    folder = tiny_llama_dir if family == "llama" else tiny_qwen2_dir
    result = export_model(str(folder), tmp_path / "e", ExportOptions(precision=precision, max_context=256, parity_tokens=4))
    assert (sha256(result.directory / "model.onnx"), sha256(result.directory / "model.onnx.data")) == WHOLE_MODEL_BUILDER[f"{family}-{precision}"]
    assert "a layer at a time" in result.parity["reference"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-q4_1.gguf", tiny_llama_dir, "Q4_1")


def test_gguf_blocks_are_carried_as_transformers_reads_them(tiny_gguf, tmp_path):
    """Every Q4_1 matrix and the Q8_0 embedding come over as stored (nibbles, q/k row order, fp16
    scales), and the engine's weights are the very floats transformers de-quantizes from the file."""
    import torch
    from transformers import AutoModelForCausalLM

    result = export_model(str(tiny_gguf), tmp_path / "e", ExportOptions(precision="int4", max_context=256, parity_tokens=4))
    blocks = result.parity["source_blocks"]
    assert blocks["rounded"] == [] and len(blocks["carried_exactly"]) == 4 * 2 + 2
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32)
    reference = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    tensors = initializers(result.directory)
    for layer in range(2):
        a, m = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
        fused = {
            f"{a}.qkv_proj.weight": [f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"],
            f"{a}.o_proj.weight": [f"{a}.o_proj.weight"],
            f"{m}.gate_up_proj.weight": [f"{m}.gate_proj.weight", f"{m}.up_proj.weight"],
            f"{m}.down_proj.weight": [f"{m}.down_proj.weight"],
        }
        for name, parts in fused.items():
            packed, scales, minimums = tensors[f"{name}.quant"], tensors[f"{name}.scales_f16"], tensors[f"{name}.minimums_f16"]
            assert scales.dtype == minimums.dtype == np.float16  # the file's own fp16 d and m
            carried = CarriedBlocks(packed, scales.reshape(minimums.shape), minimums, packed.shape[1] * 32, packed.shape[0], 4, "Q4_1")
            expected = np.concatenate([reference[p] for p in parts]).T
            np.testing.assert_allclose(dequantize_carried(carried), expected, rtol=1e-6, atol=1e-7)
    # The tied embedding is stored once: the lookup and the head read the same int8 table.
    assert "lm_head.weight_t.quant" not in tensors and tensors["model.embed_tokens.quant"].dtype == np.uint8


def test_the_layer_streamed_reference_equals_the_whole_model(tiny_gguf):
    from export.loading import load_decoder, open_decoder_source, read_decoder_config
    from export.reference import StreamedReference, WholeModelReference

    source = inspect_path(tiny_gguf)
    opened = open_decoder_source(source, read_decoder_config(source))
    sequences = [[1, 5, 9, 200, 3], list(range(10, 90))]
    streamed, whole = StreamedReference(opened.skeleton, opened.tensors), WholeModelReference(load_decoder(source).model)
    layers = []
    streamed.run(sequences, on_layer=lambda done, total: layers.append(done))
    whole.run(sequences)
    assert layers == [1, 2]
    for index in range(len(sequences)):
        np.testing.assert_allclose(streamed.logits(index), whole.logits(index), rtol=1e-4, atol=1e-4)


def test_an_fp32_engine_from_gguf_gives_pytorchs_greedy_tokens(tiny_gguf, tmp_path):
    result = export_model(str(tiny_gguf), tmp_path / "e", ExportOptions(precision="fp32", max_context=256, parity_tokens=16))
    assert result.parity["greedy_identical"] and result.parity["tokenizer_identical"], result.parity["prompts"]
    assert result.parity["max_rel_logit_error"] < 1e-4


@pytest.mark.parametrize(("matrix_type", "carried"), [("Q4_0", True), ("Q8_0", True)])
def test_other_block_types(matrix_type, carried, tiny_llama_dir, tmp_path):
    """Q4_0 blocks are carried as a symmetric 4-bit MatMulNBits; Q8_0 matrices are carried into an
    int4 engine too, as 8-bit blocks (rounding them to 4 bits would lose what the file has; the
    other types: tests/integration/test_gguf_blocks.py)."""
    gguf = write_tiny_llama_gguf(tmp_path / f"tiny-{matrix_type}.gguf", tiny_llama_dir, matrix_type)
    result = export_model(str(gguf), tmp_path / "e", ExportOptions(precision="int4", max_context=256, parity_tokens=4))
    blocks = result.parity["source_blocks"]
    assert (len(blocks["rounded"]) == 0) == carried
    if carried:
        tensors = initializers(result.directory)
        assert "model.layers.0.mlp.down_proj.weight.minimums_f16" not in tensors  # Q4_0 has no offsets
    assert result.parity["versus_fp32"]["positions"] >= 2000


def test_an_export_that_will_not_fit_is_refused_before_any_work(tiny_llama_dir, tmp_path):
    with pytest.raises(InsufficientResourcesError, match=r"needs about .* GiB of memory.*--memory-limit is 0\.0 GiB"):
        export_model(str(tiny_llama_dir), tmp_path / "out" / "e", ExportOptions(memory_limit=1 << 20))
    assert list((tmp_path / "out").iterdir()) == []  # nothing staged, nothing left
    run = subprocess.run(
        [sys.executable, "-m", "appliance", "export", str(tiny_llama_dir), "--out", str(tmp_path / "cli"), "--memory-limit", "64M"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "--memory-limit is 0.1 GiB" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.integration
def test_a_few_hundred_mb_gguf_exports_within_twice_its_size_plus_a_gib(tmp_path):
    """The export's peak memory, measured in a process of its own, stays under 2 × the GGUF + 1 GiB
    (the whole-model export took fp32 model + fp32 engine + quantized engine: ~9 × the file; runs
    here peaked at 1.27-1.41 GB against 1.49 GB), and the engine file is no bigger than 1.15 × the
    GGUF."""
    from bench.random_gguf import SHAPES, default_tokenizer_gguf, write_random_gguf

    gguf = write_random_gguf(tmp_path / "m.gguf", SHAPES["300m"], default_tokenizer_gguf())
    out = tmp_path / "e"
    probe = "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    command = [sys.executable, "-c", probe, sys.executable, "-m", "appliance", "export", str(gguf), "--precision", "int4", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    peak = int(run.stdout.strip().splitlines()[-1]) * 1024
    size = gguf.stat().st_size
    bound = 2 * size + GIB
    print(f"GGUF {size / 1e6:.0f} MB, export peak {peak / 1e6:.0f} MB, bound {bound / 1e6:.0f} MB")
    assert peak < bound, f"peak {peak / 1e6:.0f} MB against a bound of {bound / 1e6:.0f} MB"
    assert (out / "model.onnx.data").stat().st_size <= 1.15 * size
    parity = json.loads((out / "parity.json").read_text())
    assert parity["source_blocks"]["rounded"] == [] and "a layer at a time" in parity["versus_fp32"]["reference"]
    assert parity["export_resources"]["estimated_peak_memory_bytes"] >= peak  # the refusal's estimate is not below what it took
