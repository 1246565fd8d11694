"""The engine contract: manifest round trip, lookups, integrity checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from runtime.errors import IntegrityError, ManifestError
from runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    EmbeddingSpec,
    KVLayout,
    Manifest,
    TensorSpec,
    read_manifest,
    verify_files,
    write_manifest,
)


def decoder_manifest(**overrides) -> Manifest:
    inputs = [
        TensorSpec("input_ids", "token_ids", "int64", ("batch", "sequence")),
        TensorSpec("seqlens_k", "kv_seqlens", "int32", ("batch",)),
        TensorSpec("total_sequence_length", "total_length", "int32", ()),
        TensorSpec("logits_to_keep", "logits_to_keep", "int64", (1,)),
    ]
    outputs = [TensorSpec("logits", "logits", "float32", ("batch", "kept", 100))]
    for layer in range(2):
        for kind in ("key", "value"):
            inputs.append(TensorSpec(f"past.{layer}.{kind}", f"past_{kind}", "float32", ("batch", 2, 64, 16), layer))
            outputs.append(TensorSpec(f"present.{layer}.{kind}", f"present_{kind}", "float32", ("batch", 2, 64, 16), layer))
    fields = dict(
        name="tiny",
        task="text-generation",
        architecture="LlamaForCausalLM",
        model_type="llama",
        style="gqa-shared-kv",
        graph_file="model.onnx",
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        kv_cache=KVLayout(layers=2, kv_heads=2, head_dim=16, max_length=64, dtype="float32", shared_buffer=True),
        precision="fp32",
        execution_providers=("CPUExecutionProvider",),
        vocab_size=100,
        context_length=64,
        bos_token_id=1,
        eos_token_ids=(2, 3),
        pad_token_id=0,
        chat_template="{{ messages }}",
        source={"name": "tiny", "kind": "hf", "sha256": "ab" * 32},
        export_options={"max_context": 64},
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_round_trip_is_lossless():
    manifest = decoder_manifest(files={"model.onnx": "00" * 32})
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_embedding_manifest_round_trip():
    manifest = decoder_manifest(
        task="feature-extraction",
        style="encoder",
        kv_cache=None,
        embedding=EmbeddingSpec(pooling="mean", normalize=True, dimension=384, max_input_tokens=256),
        inputs=(TensorSpec("input_ids", "token_ids", "int64", ("batch", "sequence")),),
        outputs=(TensorSpec("last_hidden_state", "hidden_state", "float32", ("batch", "sequence", 384)),),
    )
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_lookups_by_role_and_layer():
    manifest = decoder_manifest()
    assert manifest.require_input("past_value", 1).name == "past.1.value"
    assert manifest.require_output("present_key", 0).name == "present.0.key"
    assert manifest.input("attention_mask") is None
    with pytest.raises(ManifestError, match="no input with role 'attention_mask'"):
        manifest.require_input("attention_mask")


def test_kv_bytes_per_position():
    # SmolLM2: 2 × 3 heads × 64 × 30 layers × 4 bytes = 45 KiB per position.
    layout = KVLayout(layers=30, kv_heads=3, head_dim=64, max_length=2048, dtype="float32", shared_buffer=True)
    assert layout.bytes_per_position() == 46080


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format_version=99), "format version 99"),
        (lambda d: d.pop("vocab_size"), "malformed"),
        (lambda d: d.update(task="translation"), "unknown task"),
        (lambda d: d["inputs"][0].update(role="mystery"), "unknown role"),
        (lambda d: d["inputs"][4].pop("layer"), "disagree"),
        (lambda d: d.update(kv_cache=None), "needs a kv_cache"),
    ],
)
def test_invalid_manifests_are_refused(change, message):
    data = decoder_manifest().to_dict()
    change(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data)


def test_write_hashes_every_file_and_verify_accepts(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.bin").write_bytes(b"x" * 10)
    write_manifest(tmp_path, decoder_manifest())
    manifest = read_manifest(tmp_path)
    assert set(manifest.files) == {"model.onnx", "sub/extra.bin"}
    assert MANIFEST_FILE not in manifest.files
    verify_files(tmp_path, manifest)


def test_altered_file_is_named(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    write_manifest(tmp_path, decoder_manifest())
    (tmp_path / "model.onnx").write_bytes(b"grapH")
    with pytest.raises(IntegrityError, match="model.onnx was altered"):
        verify_files(tmp_path, read_manifest(tmp_path))


def test_missing_file_is_named(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    write_manifest(tmp_path, decoder_manifest())
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="model.onnx is missing"):
        verify_files(tmp_path, read_manifest(tmp_path))


def test_manifest_without_hashes_is_refused(tmp_path: Path):
    with pytest.raises(IntegrityError, match="lists no file hashes"):
        verify_files(tmp_path, dataclasses.replace(decoder_manifest(), files={}))


def test_not_an_engine_directory(tmp_path: Path):
    with pytest.raises(ManifestError, match="not an engine directory"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="JSON object"):
        read_manifest(tmp_path)


def test_format_version_is_current():
    assert decoder_manifest().to_dict()["format_version"] == FORMAT_VERSION


def test_a_tensorrt_section_round_trips_and_marks_a_gpu_engine():
    from runtime.manifest import TensorRTSpec

    spec = TensorRTSpec("tensorrt", "input_ids:1x1", "input_ids:8x1", "input_ids:32x64", 32, True, "10.13.0", "NVIDIA H200", "9.0")
    manifest = decoder_manifest(precision="fp16", execution_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider"), tensorrt=spec)
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert manifest.requires_gpu and not decoder_manifest().requires_gpu
    # Manifests written before the TensorRT section existed still read (no section, no GPU needed).
    old = decoder_manifest().to_dict()
    del old["tensorrt"]
    assert Manifest.from_dict(old).tensorrt is None
