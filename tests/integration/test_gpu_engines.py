"""GPU engines: fp16 (CUDA) and int4-with-fp16-scales exports, TensorRT sections, device-side pools.

What a machine without a GPU can check runs everywhere: the graphs are valid, every node has
a CUDA kernel for its types (export/cuda_kernels.py), shapes and dtypes agree with the
manifest, the fp16 logits stay within fp16 rounding of PyTorch (the CPU execution provider
runs the same fp16 graph), a GPU engine is refused where there is no GPU, and the device-side
KV pool (OrtValues, slot copies through the copy graph) gives the host pool's logits bit for
bit. The tests marked gpu need an NVIDIA GPU and onnxruntime-gpu, and skip saying so.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.cuda_kernels import cuda_problems
from export.errors import BackendUnavailableError, ExportError, UnsupportedModelError
from export.options import ExportOptions, default_output
from export.pipeline import FP16_MAX_REL_LOGIT_ERROR, FP16_MIN_TOP1_AGREEMENT, export_model
from export.sources import ModelSource
from export.tensorrt_plans import tensorrt_spec
from runtime.decoder import open_decoder
from runtime.engine import load_engine
from runtime.errors import EngineLoadError
from runtime.gpu import nvidia_gpu_present
from runtime.manifest import read_manifest
from runtime.settings import RuntimeSettings
from tests.conftest import ROOT
from tests.graph_checks import kv_path_problems

ON_CPU = RuntimeSettings(providers=("CPUExecutionProvider",))
GPU = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_fp16(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_model(str(tiny_llama_dir), tmp_path_factory.mktemp("gpu") / "tiny-fp16", ExportOptions(precision="fp16", max_context=256))


@pytest.fixture(scope="module")
def tiny_int4_cuda(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    options = ExportOptions(precision="int4", max_context=256, device="cuda")
    return export_model(str(tiny_llama_dir), tmp_path_factory.mktemp("gpu") / "tiny-int4-cuda", options)


def graph_problems(directory: Path) -> list[str]:
    """The graph loads (ONNX Runtime checks it whole, contrib ops included, which onnx's checker
    cannot: it has no schema for SimplifiedLayerNormalization), its inputs and outputs are the
    manifest's, dtype and shape, and its KV path is a shared buffer."""
    import onnx
    import onnxruntime as ort

    manifest = read_manifest(directory)
    path = directory / manifest.graph_file
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = onnx.load(str(path), load_external_data=False).graph
    declared = {t.name: t for t in (*manifest.inputs, *manifest.outputs)}
    problems = []
    for value in [*graph.input, *graph.output]:
        spec = declared.get(value.name)
        if spec is None:
            problems.append(f"{value.name} is not in the manifest")
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        dims = tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)
        if dtype != spec.dtype or dims != tuple(spec.shape):
            problems.append(f"{value.name}: graph {dtype} {dims}, manifest {spec.dtype} {tuple(spec.shape)}")
    return problems + kv_path_problems(directory, manifest)


def test_the_fp16_engine_is_a_cuda_engine_with_fp16_kv_and_fp32_logits(tiny_fp16) -> None:
    manifest = tiny_fp16.manifest
    assert manifest.precision == "fp16" and manifest.execution_providers == ("CUDAExecutionProvider",) and manifest.requires_gpu
    assert manifest.kv_cache.dtype == "float16" and manifest.kv_cache.copy_graph == "kv_copy.onnx"
    assert {t.dtype for t in manifest.inputs if t.role.startswith("past")} == {"float16"}
    assert manifest.require_output("logits").dtype == "float32"
    assert graph_problems(tiny_fp16.directory) == []


def test_every_node_of_the_gpu_graphs_has_a_cuda_kernel(tiny_fp16, tiny_int4_cuda, tiny_llama_engine) -> None:
    assert cuda_problems(tiny_fp16.directory / "model.onnx") == []
    assert cuda_problems(tiny_int4_cuda.directory / "model.onnx") == []
    # The check can fail: the CPU engine's fp32 attention has no CUDA kernel.
    problems = cuda_problems(tiny_llama_engine.directory / "model.onnx")
    assert problems and all("GroupQueryAttention" in p and "not float" in p for p in problems), problems


def test_int4_for_the_gpu_keeps_fp16_scales_and_activations(tiny_int4_cuda) -> None:
    import onnx

    manifest = tiny_int4_cuda.manifest
    assert manifest.precision == "int4" and manifest.requires_gpu and manifest.kv_cache.dtype == "float16"
    graph = onnx.load(str(tiny_int4_cuda.directory / "model.onnx"), load_external_data=False).graph
    scales = [t for t in graph.initializer if t.name.endswith(".scales")]
    assert scales and {t.data_type for t in scales} == {onnx.TensorProto.FLOAT16}
    assert any(n.op_type == "MatMulNBits" for n in graph.node)
    assert graph_problems(tiny_int4_cuda.directory) == []
    assert tiny_int4_cuda.parity["compute_dtype"] == "float16"


def test_fp16_parity_against_pytorch_is_within_fp16_rounding(tiny_fp16) -> None:
    parity = json.loads((tiny_fp16.directory / "parity.json").read_text())
    assert parity["providers"][0] == ("CUDAExecutionProvider" if nvidia_gpu_present() else "CPUExecutionProvider")
    assert parity["max_rel_logit_error"] <= FP16_MAX_REL_LOGIT_ERROR
    assert parity["versus_fp32"]["top1_agreement"] >= FP16_MIN_TOP1_AGREEMENT
    assert parity["tokenizer_identical"] and parity["fp16_bars"]["max_rel_logit_error"] == FP16_MAX_REL_LOGIT_ERROR
    # The fp16 logits differ from the fp32 ones (the graph really computes in fp16) by little.
    assert 0 < parity["max_abs_logit_error"] and parity["greedy_identical"]


@pytest.mark.skipif(nvidia_gpu_present(), reason="an NVIDIA GPU is present: GPU engines load here (test_the_fp16_engine_runs_on_cuda)")
def test_a_gpu_engine_is_refused_without_a_gpu_and_runs_on_the_cpu_when_asked(tiny_fp16) -> None:
    with pytest.raises(EngineLoadError, match="GPU engine .*no NVIDIA GPU"):
        load_engine(tiny_fp16.directory)
    engine = load_engine(tiny_fp16.directory, ON_CPU)
    decoder = open_decoder(engine, slots=2)
    assert decoder.dtype == np.float16 and decoder.prefill(0, [1, 2, 3]).dtype == np.float32


def test_the_export_refuses_what_cannot_work(tiny_llama_dir: Path, tiny_encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="fp16 engines are GPU engines"):
        export_model(str(tiny_llama_dir), tmp_path / "a", ExportOptions(precision="fp16", device="cpu"))
    with pytest.raises(ExportError, match="CUDA GroupQueryAttention runs fp16 only"):
        export_model(str(tiny_llama_dir), tmp_path / "b", ExportOptions(precision="fp32", device="cuda"))
    with pytest.raises(UnsupportedModelError, match="embedding model"):
        export_model(str(tiny_encoder_dir), tmp_path / "c", ExportOptions(precision="fp16"))
    if not nvidia_gpu_present():
        with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU.*--precision fp16"):
            export_model(str(tiny_llama_dir), tmp_path / "d", ExportOptions(precision="fp16", backend="tensorrt"))
    assert not any(tmp_path.iterdir())


def test_gpu_engines_get_names_of_their_own() -> None:
    source = ModelSource(name="m", kind="hf", path=Path("."), task="text-generation", architecture="LlamaForCausalLM", model_type="llama", sha256="")
    names = [
        default_output(source, ExportOptions(precision=p, device=d, backend=b)).name
        for p, d, b in (("int4", "auto", "onnx"), ("fp16", "auto", "onnx"), ("int4", "cuda", "onnx"), ("fp16", "auto", "tensorrt"))
    ]
    assert names == ["m-int4", "m-fp16", "m-int4-cuda", "m-fp16-trt"]


def test_tensorrt_profiles_cover_every_dynamic_tensor_a_subgraph_starts_from(tiny_fp16, tiny_int4_cuda) -> None:
    options = ExportOptions(precision="fp16", backend="tensorrt", max_context=256, max_batch=32)
    spec = tensorrt_spec(tiny_fp16.manifest, options, tiny_fp16.directory / "model.onnx")  # the manifest has the inputs
    profiles = [dict(item.split(":") for item in shapes.split(",")) for shapes in (spec.profile_min_shapes, spec.profile_opt_shapes, spec.profile_max_shapes)]
    assert [p["input_ids"] for p in profiles] == ["1x1", "8x1", "32x256"]
    assert [p["past_key_values.0.key"] for p in profiles] == ["1x2x256x16", "8x2x256x16", "32x2x256x16"]
    assert [p["seqlens_k"] for p in profiles] == ["1", "8", "32"]
    assert "total_sequence_length" not in profiles[0] and "logits_to_keep" not in profiles[0]  # static
    # The outputs of the nodes TensorRT cannot take (they run on CUDA) start TensorRT subgraphs.
    assert profiles[2]["model.layers.0/attn"] == "32x256x64" and profiles[0]["model.layers.0/ln1"] == "1x1x64"
    assert set(profiles[0]) == set(profiles[1]) == set(profiles[2])
    int4 = tensorrt_spec(tiny_int4_cuda.manifest, options, tiny_int4_cuda.directory / "model.onnx")
    # MatMulNBits runs on CUDA; its output (HQQ's blocks, before their offsets are added) starts one.
    assert "model.layers.0/qkv_proj/nbits/out:1x1x128" in int4.profile_min_shapes


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_device_side_pool_gives_the_host_pools_logits(precision: str, tiny_llama_engine, tiny_fp16) -> None:
    """The code path a GPU runs (pool, inputs and logits as OrtValues, slots moved by the copy
    graph), run on the CPU, against the host pool: same logits bit for bit, same cache."""
    engine = load_engine(tiny_llama_engine.directory) if precision == "fp32" else load_engine(tiny_fp16.directory, ON_CPU)
    host, device = open_decoder(engine, slots=4), open_decoder(engine, slots=4, device_side=True)
    assert device.device_side and not host.device_side
    results = []
    for decoder in (host, device):
        out = [decoder.prefill(0, [1, 2, 3, 4, 5]), decoder.prefill(1, [7, 8, 9]), decoder.decode([0, 1], [10, 11])]
        decoder.swap(0, 1)
        out.append(decoder.decode([0, 1], [12, 13]))
        decoder.move(1, 3)
        out.append(decoder.decode([3], [14]))
        decoder.copy_prefix(3, 2, 4)
        out.append(decoder.prefill(2, [20, 21], 2))
        results.append(out)
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(ours, theirs)
    assert list(host.lengths) == list(device.lengths) == [5, 0, 6, 8]
    for slot in range(4):
        n = int(host.lengths[slot])
        np.testing.assert_array_equal(host.cache_view(1, "value")[slot, :, :n], device.cache_view(1, "value")[slot, :, :n])
    assert device.pool_bytes() == host.pool_bytes() * 5 // 4  # one scratch slot for swaps


@pytest.mark.integration
def test_the_default_model_exports_to_fp16_within_fp16_rounding_of_pytorch(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SmolLM2 through the CLI, as `make gpu-check` exports it (its parity on this machine's provider)."""
    out = tmp_path_factory.mktemp("gpu-default") / "smollm2-135m-instruct-fp16"
    for args in (("pull", "smollm2-135m-instruct"), ("export", "smollm2-135m-instruct", "--precision", "fp16", "--out", str(out))):
        result = subprocess.run([sys.executable, "-m", "appliance", *args], cwd=ROOT, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest(out)
    assert manifest.precision == "fp16" and manifest.requires_gpu and manifest.kv_cache.dtype == "float16"
    assert graph_problems(out) == [] and cuda_problems(out / "model.onnx") == []
    parity = json.loads((out / "parity.json").read_text())
    assert parity["max_rel_logit_error"] <= FP16_MAX_REL_LOGIT_ERROR
    assert parity["versus_fp32"]["top1_agreement"] >= FP16_MIN_TOP1_AGREEMENT
    # fp16 halves the bytes a decode step reads: 270 MB of SmolLM2's fp32 weights become ~135 MB.
    assert 0.45 < parity["matmul_weight_bytes"] / (134_515_008 * 4) < 0.55


# -- on an NVIDIA GPU (skipped elsewhere, saying so) -------------------------------------


@GPU
def test_the_fp16_engine_runs_on_cuda_with_the_pool_on_the_device(tiny_fp16) -> None:
    engine = load_engine(tiny_fp16.directory)
    assert engine.providers[0] == "CUDAExecutionProvider"
    decoder = open_decoder(engine, slots=4)
    assert decoder.device == "cuda" and decoder.device_side
    reference = open_decoder(load_engine(tiny_fp16.directory, ON_CPU), slots=4)
    for d in (decoder, reference):
        d.prefill(0, [1, 2, 3, 4, 5])
        d.prefill(1, [6, 7])
    ours, theirs = decoder.decode([0, 1], [8, 9]), reference.decode([0, 1], [8, 9])
    assert np.abs(ours - theirs).max() <= 0.02 * np.abs(theirs).max()
    decoder.swap(0, 1)
    np.testing.assert_allclose(decoder.decode([1], [10]), reference.decode([0], [10]), atol=0.02 * np.abs(theirs).max())


@GPU
def test_cuda_graph_replays_give_the_uncaptured_tokens(tiny_fp16) -> None:
    plain = open_decoder(load_engine(tiny_fp16.directory), slots=2)
    graphs = open_decoder(load_engine(tiny_fp16.directory, RuntimeSettings(cuda_graph=True)), slots=2)
    assert graphs.engine.cuda_graph
    tokens = []
    for decoder in (plain, graphs):
        token, out = int(decoder.prefill(0, [1, 2, 3]).argmax()), []
        for _ in range(16):
            token = int(decoder.decode([0], [token])[0].argmax())
            out.append(token)
        tokens.append(out)
    assert tokens[0] == tokens[1]


@GPU
def test_a_tensorrt_export_builds_plans_and_records_what_they_were_built_for(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from runtime.session import check_tensorrt_cache

    result = export_model(str(tiny_llama_dir), tmp_path / "trt", ExportOptions(precision="fp16", backend="tensorrt", max_context=256, max_batch=4))
    trt = result.manifest.tensorrt
    assert trt is not None and trt.tensorrt_version and trt.gpu_name
    assert any(name.startswith(f"{trt.cache_dir}/") for name in result.manifest.files), "the plans are hashed with the engine"
    assert load_engine(result.directory).providers[0] == "TensorrtExecutionProvider"
    moved = dataclasses.replace(result.manifest, tensorrt=dataclasses.replace(trt, gpu_name="another GPU"))
    with pytest.raises(EngineLoadError, match="re-export with --backend tensorrt"):
        check_tensorrt_cache(moved)
