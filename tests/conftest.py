"""Shared fixtures: tiny synthetic models (seconds) and the real default engines (minutes, once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep test runs single-machine and offline-friendly: no hub look-ups, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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
    from export.pipeline import ExportOptions, export_model

    out = tmp_path_factory.mktemp("engines") / "tiny-llama-fp32"
    return export_model(str(tiny_llama_dir), out, ExportOptions(max_context=2048))
