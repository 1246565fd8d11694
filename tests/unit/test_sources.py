"""Every way a model source can be unusable gives a one-line error before any heavy work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.errors import CorruptSourceError, SourceNotFoundError, UnsupportedModelError
from export.sources import inspect_path, read_gguf_metadata, resolve_source
from tests.tiny_models import write_gguf


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_name_lists_the_defaults(tmp_path: Path):
    with pytest.raises(SourceNotFoundError) as exc:
        resolve_source("smollm3", cache_dir=tmp_path)
    assert "smollm2-135m-instruct" in one_line(exc) and "all-minilm-l6-v2" in one_line(exc)


def test_missing_path(tmp_path: Path):
    with pytest.raises(SourceNotFoundError, match="does not exist") as exc:
        resolve_source(str(tmp_path / "nope.gguf"))
    one_line(exc)


def test_file_that_is_not_gguf(tmp_path: Path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(SourceNotFoundError, match="not a .gguf"):
        inspect_path(path)


def test_wrong_magic_is_corrupt(tmp_path: Path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CorruptSourceError, match="not a GGUF file") as exc:
        inspect_path(path)
    one_line(exc)


@pytest.mark.parametrize("keep", [12, 100, 0.6])
def test_truncated_gguf_is_corrupt(tmp_path: Path, keep):
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    size = int(len(whole) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[:size])
    with pytest.raises(CorruptSourceError, match="damaged GGUF|holds no tensors") as exc:
        inspect_path(path)
    one_line(exc)


def test_gguf_with_random_bytes_after_magic(tmp_path: Path):
    path = tmp_path / "noise.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(CorruptSourceError):
        inspect_path(path)


def test_well_formed_gguf_reads(tmp_path: Path):
    metadata = read_gguf_metadata(write_gguf(tmp_path / "ok.gguf"))
    assert metadata["general.architecture"] == "llama"
    source = inspect_path(tmp_path / "ok.gguf")
    assert (source.kind, source.task, source.name) == ("gguf", "text-generation", "ok")
    assert len(source.sha256) == 64


def test_unsupported_gguf_architecture(tmp_path: Path):
    with pytest.raises(UnsupportedModelError, match="'rwkv6'") as exc:
        inspect_path(write_gguf(tmp_path / "rwkv.gguf", architecture="rwkv6"))
    one_line(exc)


def test_folder_without_config(tmp_path: Path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(SourceNotFoundError, match="no config.json.*did you mean"):
        inspect_path(tmp_path)


def test_folder_without_weights(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(SourceNotFoundError, match="no weights"):
        inspect_path(tmp_path)


def test_folder_with_broken_config(tmp_path: Path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CorruptSourceError, match="not valid JSON"):
        inspect_path(tmp_path)


def test_unsupported_architecture(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetForImageClassification"]}))
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    with pytest.raises(UnsupportedModelError, match="ResNetForImageClassification") as exc:
        inspect_path(tmp_path)
    one_line(exc)


@pytest.mark.parametrize(
    "config, extra, task",
    [
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, None, "text-generation"),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, None, "text-generation"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, None, "feature-extraction"),
        ({"model_type": "custom", "architectures": ["CustomModel"]}, "modules.json", "feature-extraction"),
    ],
)
def test_task_detection(tmp_path: Path, config, extra, task):
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    if extra:
        (tmp_path / extra).write_text("[]")
    assert inspect_path(tmp_path).task == task


def test_engine_name_is_sanitised(tmp_path: Path):
    folder = tmp_path / "My Model (v2)"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (folder / "model.safetensors").write_bytes(b"\0")
    assert inspect_path(folder).name == "my-model-v2"
