"""Provider choice (the engine's intended providers that this machine can really use), provider options, TensorRT caches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.errors import EngineLoadError
from runtime.gpu import GPUIdentity
from runtime.manifest import TensorRTSpec
from runtime.session import check_tensorrt_cache, choose_providers, provider_options
from runtime.settings import RuntimeSettings
from tests.unit.test_manifest import decoder_manifest

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CUDA_FIRST = decoder_manifest(execution_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))


def test_cpu_only_build_runs_on_the_cpu():
    assert choose_providers(CUDA_FIRST, RuntimeSettings(), ["CPUExecutionProvider"], gpu_present=False) == ["CPUExecutionProvider"]


def test_gpu_build_without_a_gpu_still_runs_on_the_cpu():
    assert choose_providers(CUDA_FIRST, RuntimeSettings(), GPU_BUILD, gpu_present=False) == ["CPUExecutionProvider"]


def test_gpu_build_with_a_gpu_uses_the_intended_gpu_provider():
    assert choose_providers(CUDA_FIRST, RuntimeSettings(), GPU_BUILD, gpu_present=True) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cpu_engines_stay_on_the_cpu_even_with_a_gpu():
    cpu_engine = decoder_manifest(execution_providers=("CPUExecutionProvider",))
    assert choose_providers(cpu_engine, RuntimeSettings(), GPU_BUILD, gpu_present=True) == ["CPUExecutionProvider"]


def test_explicit_providers_win_and_cpu_is_always_last():
    settings = RuntimeSettings(providers=("TensorrtExecutionProvider", "CUDAExecutionProvider"))
    assert choose_providers(CUDA_FIRST, settings, GPU_BUILD, gpu_present=True) == [*GPU_BUILD]


@pytest.mark.parametrize(("available", "gpu", "message"), [(["CPUExecutionProvider"], True, "not available"), (GPU_BUILD, False, "need an NVIDIA GPU")])
def test_explicit_providers_that_cannot_run_are_errors(available, gpu, message):
    with pytest.raises(EngineLoadError, match=message):
        choose_providers(CUDA_FIRST, RuntimeSettings(providers=("CUDAExecutionProvider",)), available, gpu_present=gpu)


# GPU engines (fp16 compute) name no CPU provider: they are refused where they would crawl.
GPU_ENGINE = decoder_manifest(precision="fp16", execution_providers=("CUDAExecutionProvider",))
TRT_SPEC = TensorRTSpec(
    cache_dir="tensorrt", profile_min_shapes="input_ids:1x1", profile_opt_shapes="input_ids:8x1", profile_max_shapes="input_ids:32x2048",
    max_batch=32, tensorrt_version="10.13.0", gpu_name="NVIDIA H200", compute_capability="9.0",
)  # fmt: skip
TRT_ENGINE = decoder_manifest(precision="fp16", execution_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider"), tensorrt=TRT_SPEC)
H200 = GPUIdentity("NVIDIA H200", "9.0", "580.65", 143771)


def test_a_gpu_engine_without_a_gpu_is_refused_with_what_to_do():
    assert GPU_ENGINE.requires_gpu and not CUDA_FIRST.requires_gpu
    with pytest.raises(EngineLoadError, match="GPU engine .*no NVIDIA GPU.*--device cpu.*--providers CPUExecutionProvider"):
        choose_providers(GPU_ENGINE, RuntimeSettings(), GPU_BUILD, gpu_present=False)


def test_a_gpu_engine_on_a_cpu_build_of_onnxruntime_is_refused():
    with pytest.raises(EngineLoadError, match="make install-gpu"):
        choose_providers(GPU_ENGINE, RuntimeSettings(), ["CPUExecutionProvider"], gpu_present=True)


def test_a_gpu_engine_runs_on_its_providers_with_cpu_for_the_rest():
    assert choose_providers(GPU_ENGINE, RuntimeSettings(), GPU_BUILD, gpu_present=True) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(TRT_ENGINE, RuntimeSettings(), GPU_BUILD, gpu_present=True) == GPU_BUILD


def test_asking_for_the_cpu_runs_a_gpu_engine_there():
    settings = RuntimeSettings(providers=("CPUExecutionProvider",))
    assert choose_providers(GPU_ENGINE, settings, ["CPUExecutionProvider"], gpu_present=False) == ["CPUExecutionProvider"]


def test_tensorrt_options_come_from_the_manifest_and_live_in_the_engine_directory(tmp_path: Path):
    options = provider_options("TensorrtExecutionProvider", tmp_path, TRT_ENGINE, RuntimeSettings(device_id=1))
    assert options["device_id"] == "1"
    assert options["trt_engine_cache_enable"] == "1" and options["trt_timing_cache_enable"] == "1"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path / "tensorrt")
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) == (
        "input_ids:1x1", "input_ids:8x1", "input_ids:32x2048",
    )  # fmt: skip
    assert options["trt_fp16_enable"] == "1"


def test_cuda_graphs_are_asked_of_the_cuda_provider_only_when_set(tmp_path: Path):
    assert "enable_cuda_graph" not in provider_options("CUDAExecutionProvider", tmp_path, GPU_ENGINE, RuntimeSettings())
    assert provider_options("CUDAExecutionProvider", tmp_path, GPU_ENGINE, RuntimeSettings(cuda_graph=True))["enable_cuda_graph"] == "1"
    assert provider_options("CPUExecutionProvider", tmp_path, GPU_ENGINE, RuntimeSettings(cuda_graph=True)) == {}


def test_tensorrt_plans_run_only_where_they_were_built():
    check_tensorrt_cache(TRT_ENGINE, H200, "10.13.0", probe=False)  # same GPU model, same TensorRT: fine
    with pytest.raises(EngineLoadError, match=r"TensorRT 10\.13\.0 \(this machine has 10\.14\.1\).*re-export with --backend tensorrt"):
        check_tensorrt_cache(TRT_ENGINE, H200, "10.14.1", probe=False)
    with pytest.raises(EngineLoadError, match="NVIDIA H200 .*this machine has NVIDIA L4"):
        check_tensorrt_cache(TRT_ENGINE, GPUIdentity("NVIDIA L4", "8.9", "580.65", 23034), "10.13.0", probe=False)
    with pytest.raises(EngineLoadError, match="no GPU nvidia-smi can see"):
        check_tensorrt_cache(TRT_ENGINE, None, "10.13.0", probe=False)
    # A TensorRT engine whose plans were never built (no identity recorded): the first session builds them.
    unbuilt = dataclasses.replace(TRT_ENGINE, tensorrt=dataclasses.replace(TRT_SPEC, tensorrt_version=None, gpu_name=None))
    check_tensorrt_cache(unbuilt, None, None, probe=False)
