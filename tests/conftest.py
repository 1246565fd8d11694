"""Shared fixtures: tiny synthetic models (seconds) and the real default engines (minutes, once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Keep test runs single-machine and offline-friendly: no hub look-ups, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU-only tests (marked gpu) skip, saying why, where there is no NVIDIA GPU to run them."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import onnxruntime as ort

    from runtime.gpu import nvidia_gpu_present

    if not nvidia_gpu_present():
        reason = "no NVIDIA GPU"
    elif "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = "an NVIDIA GPU, but this onnxruntime has no CUDA provider: make install-gpu"
    else:
        return
    for item in gpu_tests:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import make_tiny_sentence_encoder

    return make_tiny_sentence_encoder(tmp_path_factory.mktemp("models") / "tiny-encoder")


@pytest.fixture(scope="session")
def tiny_llama_engine(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny llama exported once with our GQA builder."""
    from export.options import ExportOptions
    from export.pipeline import export_model

    out = tmp_path_factory.mktemp("engines") / "tiny-llama-fp32"
    return export_model(str(tiny_llama_dir), out, ExportOptions(max_context=2048))


@pytest.fixture(scope="session")
def tiny_gpt2_engine(tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny GPT-2 exported through the optimum fallback (concatenated KV)."""
    from export.options import ExportOptions
    from export.pipeline import export_model

    return export_model(str(tiny_gpt2_dir), tmp_path_factory.mktemp("engines") / "gpt2", ExportOptions())


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run the `appliance` command line; fail the test with its stderr if it fails."""
    result = subprocess.run([sys.executable, "-m", "appliance", *args], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def default_engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real default models pulled and exported through the CLI, once per run (minutes).

    "int4" (the engine `make serve` builds) and "encoder" share one folder, which the
    server tests serve; "decoder" is the fp32 engine, compared with PyTorch, in its own.
    """
    # APPLIANCE_TEST_ENGINE_CACHE (local iteration only; CI never sets it) keeps the exports in a
    # folder between runs: an engine whose manifest is there is not exported again.
    cache = os.environ.get("APPLIANCE_TEST_ENGINE_CACHE")
    out = Path(cache) if cache else tmp_path_factory.mktemp("default-engines")
    engines = {
        "decoder": out / "fp32" / "smollm2-135m-instruct-fp32",
        "int4": out / "serve" / "smollm2-135m-instruct-int4",
        "encoder": out / "serve" / "all-minilm-l6-v2",
    }
    if all((path / "manifest.json").is_file() for path in engines.values()):
        return engines
    cli("pull", "smollm2-135m-instruct", "all-minilm-l6-v2")
    exports = {
        "decoder": ("smollm2-135m-instruct", "--precision", "fp32"),
        "int4": ("smollm2-135m-instruct", "--precision", "int4"),
        "encoder": ("all-minilm-l6-v2",),
    }
    for key, args in exports.items():
        if not (engines[key] / "manifest.json").is_file():
            cli("export", *args, "--out", str(engines[key]))
    return engines
