"""Provider choice: the engine's intended providers that this machine can really use."""

from __future__ import annotations

import pytest

from runtime.errors import EngineLoadError
from runtime.session import choose_providers
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
