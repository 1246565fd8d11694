"""The engine directory contract: manifest.json.

An engine directory is self-describing. `manifest.json` names every tensor of the graph and
its role, the KV-cache layout, special token ids, the context length, the chat template,
precision, intended execution providers, how it was exported, from what, and the sha256 of
every other file in the directory. The runtime never hard-codes a tensor name: it asks the
manifest for the tensor that plays a role.

Export writes manifests (`Manifest.to_dict`, `write_manifest`); the runtime reads them
(`read_manifest`) and checks the files (`verify_files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import IntegrityError, ManifestError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"
TOKENIZER_FILE = "tokenizer.json"

TASK_TEXT_GENERATION = "text-generation"
TASK_EMBEDDING = "feature-extraction"
TASK_RERANK = "rerank"  # cross-encoders: a (query, document) pair in, one relevance score out
TASKS = (TASK_TEXT_GENERATION, TASK_EMBEDDING, TASK_RERANK)

# Graph styles the runtime knows how to drive.
STYLE_GQA_SHARED_KV = "gqa-shared-kv"  # our builder: GroupQueryAttention, past == present buffer
STYLE_CONCAT_KV = "concat-kv"  # optimum's exporter: present = concat(past, new)
STYLE_ENCODER = "encoder"  # embedding models and cross-encoders: one forward pass, no cache
STYLES = (STYLE_GQA_SHARED_KV, STYLE_CONCAT_KV, STYLE_ENCODER)

# Roles a tensor can play. Per-layer roles carry `layer`.
ROLES = (
    "token_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "kv_seqlens",  # int32 [batch]: tokens already in the cache + new ones - 1 (GQA's seqlens_k)
    "total_length",  # int32 scalar: longest total length in the batch (GQA)
    "logits_to_keep",  # int64 [1]: logits are computed for the last N positions only
    "past_key",
    "past_value",
    "present_key",
    "present_value",
    "logits",
    "hidden_state",
)
LAYER_ROLES = ("past_key", "past_value", "present_key", "present_value")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, the role it plays, dtype and symbolic shape."""

    name: str
    role: str
    dtype: str
    shape: tuple[int | str, ...]
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ManifestError(f"tensor {self.name!r} has unknown role {self.role!r}")
        if (self.role in LAYER_ROLES) != (self.layer is not None):
            raise ManifestError(f"tensor {self.name!r}: role {self.role!r} and layer {self.layer!r} disagree")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "role": self.role, "dtype": self.dtype, "shape": list(self.shape)}
        if self.layer is not None:
            data["layer"] = self.layer
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(
            name=data["name"],
            role=data["role"],
            dtype=data["dtype"],
            shape=tuple(data["shape"]),
            layer=data.get("layer"),
        )


@dataclass(frozen=True)
class KVLayout:
    """Shape of the KV cache of a decoder engine.

    Tensors are [batch, kv_heads, length, head_dim] per layer for key and value. With
    `shared_buffer` the graph reads the past from and writes the present into one
    preallocated buffer of `max_length` positions (GroupQueryAttention); without it, the
    present is a new tensor of past + new positions (optimum's concatenating graphs).
    """

    layers: int
    kv_heads: int
    head_dim: int
    max_length: int
    dtype: str
    shared_buffer: bool
    layout: str = "batch,kv_heads,sequence,head_dim"
    # A graph of Identity nodes, one per cache tensor (source.{i} -> target.{i}, i = 2 * layer
    # + 0 for keys, 1 for values), that copies a slot's cache to another slot where the pool
    # lives in device memory (GPU engines): the runtime never imports a CUDA library itself.
    copy_graph: str | None = None

    def bytes_per_position(self) -> int:
        """Bytes one token position occupies across all layers, key and value."""
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[self.dtype]
        return 2 * self.layers * self.kv_heads * self.head_dim * itemsize


@dataclass(frozen=True)
class EmbeddingSpec:
    """How token states become one sentence vector (sentence-transformers' Pooling module)."""

    pooling: str  # "mean", "cls", "max", "last"
    normalize: bool
    dimension: int
    max_input_tokens: int

    POOLINGS = ("mean", "cls", "max", "last")

    def __post_init__(self) -> None:
        if self.pooling not in self.POOLINGS:
            raise ManifestError(f"unknown pooling {self.pooling!r}; expected one of {self.POOLINGS}")


@dataclass(frozen=True)
class RerankSpec:
    """How a cross-encoder reads a (query, document) pair and turns its logit into a relevance score.

    Recorded at export from the model's sentence-transformers CrossEncoder settings, so scores
    match what `CrossEncoder.predict` gives for the same pairs.
    """

    # Most tokens of one pair, special tokens included (the length the model was trained with).
    max_input_tokens: int
    # How an over-long pair is cut: "longest_first" (sentence-transformers' CrossEncoder: a token
    # at a time from whichever text is longer) or "only_second" (the document only).
    truncation: str = "longest_first"
    # Applied to the logit: "sigmoid" (CrossEncoder's default for one label) or "identity" (the
    # raw logit, as models whose config names torch.nn.Identity ask, e.g. ms-marco-MiniLM).
    activation: str = "sigmoid"

    TRUNCATIONS = ("longest_first", "only_second")
    ACTIVATIONS = ("sigmoid", "identity")

    def __post_init__(self) -> None:
        if self.truncation not in self.TRUNCATIONS:
            raise ManifestError(f"unknown pair truncation {self.truncation!r}; expected one of {self.TRUNCATIONS}")
        if self.activation not in self.ACTIVATIONS:
            raise ManifestError(f"unknown rerank activation {self.activation!r}; expected one of {self.ACTIVATIONS}")
        if self.max_input_tokens < 4:
            raise ManifestError(f"a reranker needs room for a pair: max_input_tokens {self.max_input_tokens} is too small")


@dataclass(frozen=True)
class TensorRTSpec:
    """How the ONNX Runtime TensorRT execution provider builds and caches this engine's plans.

    The shape profiles are in the provider's own syntax (`name:AxBxC,name2:...`), written by
    the export from the graph's dynamic inputs and the batch/context limits. The identity
    fields are recorded when the export built the plan cache on a GPU machine: a plan is
    only valid for the TensorRT version and the GPU model it was built with, so the runtime
    refuses a cache built elsewhere instead of letting TensorRT fail or silently rebuild.
    """

    # Folder inside the engine directory that holds the plan cache and the timing cache.
    cache_dir: str
    # Optimization profile: smallest, typical and largest shapes of every dynamic input.
    profile_min_shapes: str
    profile_opt_shapes: str
    profile_max_shapes: str
    # Largest batch (scheduler slots) the profile covers.
    max_batch: int
    # Let TensorRT pick fp16 kernels (the graph computes in fp16 already).
    fp16: bool = True
    # Recorded when the cache was built (None: no cache yet, the first load builds it).
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about an engine directory."""

    name: str
    task: str
    architecture: str
    model_type: str
    style: str
    graph_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str
    execution_providers: tuple[str, ...]
    vocab_size: int
    context_length: int
    source: dict[str, Any]
    export_options: dict[str, Any]
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    add_bos_token: bool = False
    chat_template: str | None = None
    kv_cache: KVLayout | None = None
    embedding: EmbeddingSpec | None = None
    rerank: RerankSpec | None = None
    # TensorRT engines only (export --backend tensorrt).
    tensorrt: TensorRTSpec | None = None
    tokenizer_file: str = TOKENIZER_FILE
    # What the export changed in the model's tokenizer.json, and why (export.loading.save_tokenizer).
    tokenizer_changes: tuple[str, ...] = ()
    exporter: dict[str, str] = field(default_factory=dict)
    created: str = ""
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ManifestError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.style not in STYLES:
            raise ManifestError(f"unknown graph style {self.style!r}; expected one of {STYLES}")
        if self.task == TASK_TEXT_GENERATION and self.kv_cache is None:
            raise ManifestError("a text-generation manifest needs a kv_cache section")
        if self.task == TASK_EMBEDDING and self.embedding is None:
            raise ManifestError("a feature-extraction manifest needs an embedding section")
        if self.task == TASK_RERANK and self.rerank is None:
            raise ManifestError("a rerank manifest needs a rerank section")

    @property
    def requires_gpu(self) -> bool:
        """GPU engines (fp16 compute, CUDA or TensorRT) name no CPU provider: the CPU EP can
        execute their fp16 graphs, but slowly, so it runs them only when asked explicitly."""
        return "CPUExecutionProvider" not in self.execution_providers

    # -- lookups the runtime uses instead of hard-coded names ---------------------------

    def input(self, role: str, layer: int | None = None) -> TensorSpec | None:
        """The input tensor playing `role` (for `layer`), or None if the graph has none."""
        return _find(self.inputs, role, layer)

    def output(self, role: str, layer: int | None = None) -> TensorSpec | None:
        """The output tensor playing `role` (for `layer`), or None if the graph has none."""
        return _find(self.outputs, role, layer)

    def require_input(self, role: str, layer: int | None = None) -> TensorSpec:
        spec = self.input(role, layer)
        if spec is None:
            raise ManifestError(f"engine {self.name!r} has no input with role {role!r} (layer {layer})")
        return spec

    def require_output(self, role: str, layer: int | None = None) -> TensorSpec:
        spec = self.output(role, layer)
        if spec is None:
            raise ManifestError(f"engine {self.name!r} has no output with role {role!r} (layer {layer})")
        return spec

    def require_kv_cache(self) -> KVLayout:
        """The KV cache layout, which every text-generation manifest has."""
        if self.kv_cache is None:
            raise ManifestError(f"engine {self.name!r} ({self.task}) has no kv_cache section")
        return self.kv_cache

    def require_embedding(self) -> EmbeddingSpec:
        """The embedding section, which every feature-extraction manifest has."""
        if self.embedding is None:
            raise ManifestError(f"engine {self.name!r} ({self.task}) has no embedding section")
        return self.embedding

    def require_rerank(self) -> RerankSpec:
        """The rerank section, which every rerank manifest has."""
        if self.rerank is None:
            raise ManifestError(f"engine {self.name!r} ({self.task}) has no rerank section")
        return self.rerank

    # -- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format_version": self.format_version,
            "name": self.name,
            "task": self.task,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "graph": {"file": self.graph_file, "style": self.style},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "kv_cache": dataclasses.asdict(self.kv_cache) if self.kv_cache else None,
            "embedding": dataclasses.asdict(self.embedding) if self.embedding else None,
            "rerank": dataclasses.asdict(self.rerank) if self.rerank else None,
            "tensorrt": dataclasses.asdict(self.tensorrt) if self.tensorrt else None,
            "vocab_size": self.vocab_size,
            "bos_token_id": self.bos_token_id,
            "eos_token_ids": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
            "add_bos_token": self.add_bos_token,
            "context_length": self.context_length,
            "chat_template": self.chat_template,
            "tokenizer": self.tokenizer_file,
            "tokenizer_changes": list(self.tokenizer_changes),
            "precision": self.precision,
            "execution_providers": list(self.execution_providers),
            "export_options": self.export_options,
            "source": self.source,
            "exporter": self.exporter,
            "created": self.created,
            "files": dict(sorted(self.files.items())),
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format version {version!r} is not {FORMAT_VERSION}: "
                "re-export the engine with this version of the appliance"
            )
        try:
            kv = data.get("kv_cache")
            emb = data.get("embedding")
            rerank = data.get("rerank")
            trt = data.get("tensorrt")
            return cls(
                format_version=version,
                name=data["name"],
                task=data["task"],
                architecture=data["architecture"],
                model_type=data["model_type"],
                style=data["graph"]["style"],
                graph_file=data["graph"]["file"],
                inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                kv_cache=KVLayout(**kv) if kv else None,
                embedding=EmbeddingSpec(**emb) if emb else None,
                rerank=RerankSpec(**rerank) if rerank else None,
                tensorrt=TensorRTSpec(**trt) if trt else None,
                vocab_size=int(data["vocab_size"]),
                bos_token_id=data.get("bos_token_id"),
                eos_token_ids=tuple(data.get("eos_token_ids", ())),
                pad_token_id=data.get("pad_token_id"),
                add_bos_token=bool(data.get("add_bos_token", False)),
                context_length=int(data["context_length"]),
                chat_template=data.get("chat_template"),
                tokenizer_file=data.get("tokenizer", TOKENIZER_FILE),
                tokenizer_changes=tuple(data.get("tokenizer_changes", ())),
                precision=data["precision"],
                execution_providers=tuple(data["execution_providers"]),
                export_options=dict(data.get("export_options", {})),
                source=dict(data.get("source", {})),
                exporter=dict(data.get("exporter", {})),
                created=data.get("created", ""),
                files=dict(data.get("files", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest.json is malformed ({type(exc).__name__}: {exc}); re-export the engine") from exc


def _find(specs: Iterable[TensorSpec], role: str, layer: int | None) -> TensorSpec | None:
    for spec in specs:
        if spec.role == role and spec.layer == layer:
            return spec
    return None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_directory(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` except manifest.json, keyed by relative path."""
    hashes = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST_FILE:
            hashes[path.relative_to(directory).as_posix()] = sha256_file(path)
    return hashes


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write manifest.json with the current hashes of every other file in `directory`."""
    final = dataclasses.replace(manifest, files=hash_directory(directory))
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(final.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(directory: Path) -> Manifest:
    """Read and validate `directory/manifest.json` (without checking file hashes)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{path} not found: {directory} is not an engine directory (run `appliance export`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is unreadable ({exc}); re-export the engine") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} does not hold a JSON object; re-export the engine")
    return Manifest.from_dict(data)


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists against its sha256; raise IntegrityError on the first mismatch."""
    directory = Path(directory)
    if not manifest.files:
        raise IntegrityError(f"{directory}/manifest.json lists no file hashes; re-export the engine")
    for relative, expected in manifest.files.items():
        path = directory / relative
        if not path.is_file():
            raise IntegrityError(f"engine {manifest.name!r}: {relative} is missing from {directory}; re-export the engine")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"engine {manifest.name!r}: {relative} was altered on disk "
                f"(sha256 {actual[:12]}… but the manifest says {expected[:12]}…); re-export the engine"
            )


def find_engine_dirs(root: Path) -> list[Path]:
    """Engine directories directly under `root` (those with a manifest), by name; `root` itself if it is one."""
    if (root / MANIFEST_FILE).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())
