"""The models a server offers: engine directories loaded (after fork), warmed, and looked up by name.

A `ModelRegistry` starts empty and `loading`; `load_in_background()` loads every engine of
a directory on a thread, so the worker answers `/health` with 503 and a reason meanwhile,
then 200 once every engine is loaded and warmed. Tests build a registry from fakes with
`ModelRegistry.of(...)`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from api.errors import BadRequest, ModelNotFound, Unavailable
from runtime.manifest import MANIFEST_FILE, TASK_EMBEDDING, TASK_TEXT_GENERATION

if TYPE_CHECKING:  # the runtime's types, without importing ONNX Runtime before the engines load
    from runtime.embeddings import EmbeddingResult
    from runtime.engine import Engine
    from runtime.events import Event
    from runtime.generation import FittedPrompt, GenerationRequest
    from runtime.scheduler import SchedulerStats
    from runtime.settings import RuntimeSettings

# Bytes per weight of each precision, to state a parameter count from the engine's size.
_BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


@dataclass(frozen=True)
class ModelInfo:
    """What the model listing routes say about an engine."""

    name: str
    task: str  # TASK_TEXT_GENERATION or TASK_EMBEDDING
    created: int  # unix seconds (the export time)
    size_bytes: int
    digest: str  # sha256 of manifest.json, which pins every other file
    family: str
    architecture: str
    precision: str
    providers: tuple[str, ...]
    context_length: int
    parameter_count: int  # estimated from the weights' size and precision
    chat_template: str | None = None
    embedding_dimension: int | None = None

    @property
    def modified_at(self) -> str:
        return datetime.fromtimestamp(self.created, timezone.utc).isoformat().replace("+00:00", "Z")

    @property
    def parameter_size(self) -> str:
        """Ollama's style: 135M, 7.2B."""
        count = self.parameter_count
        if count >= 1e9:
            return f"{count / 1e9:.1f}B"
        return f"{count / 1e6:.0f}M" if count >= 1e6 else str(count)

    @property
    def quantization_level(self) -> str:
        return {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}.get(self.precision, self.precision.upper())


class Events(Protocol):
    """A generation's events as the runtime yields them; closing it cancels the generation."""

    def __iter__(self) -> Iterator[Event]: ...

    def __next__(self) -> Event: ...

    def close(self) -> None: ...


class TextModel(Protocol):
    """What the API needs of a text generator: `runtime.generation.TextGenerator` (or a test fake)."""

    @property
    def has_chat_template(self) -> bool: ...

    @property
    def chat_template_source(self) -> str | None: ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]: ...

    def prepare(self, request: GenerationRequest) -> FittedPrompt: ...

    def generate(self, request: GenerationRequest, heartbeat_s: float | None = None) -> Events: ...

    def stats(self) -> SchedulerStats: ...


class EmbeddingModel(Protocol):
    """What the API needs of an embedder: `runtime.embeddings.Embedder` (or a test fake)."""

    def encode(self, texts: Sequence[str], truncate: bool = True) -> EmbeddingResult: ...

    def encode_ids(self, inputs: Sequence[Sequence[int]], truncate: bool = False) -> EmbeddingResult: ...

    def token_ids(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class LoadedModel:
    """A model ready to serve: a generator (text) or an embedder (vectors)."""

    info: ModelInfo
    generator: TextModel | None = None
    embedder: EmbeddingModel | None = None
    load_duration_ns: int = 0

    @property
    def name(self) -> str:
        return self.info.name

    def text(self) -> TextModel:
        """The generator; the registry's task check has made sure there is one."""
        if self.generator is None:
            raise BadRequest(f"model '{self.name}' cannot generate text", param="model")
        return self.generator

    def embeddings(self) -> EmbeddingModel:
        if self.embedder is None:
            raise BadRequest(f"model '{self.name}' cannot embed text", param="model")
        return self.embedder


def describe_engine(engine: Engine) -> ModelInfo:
    """A ModelInfo from a loaded runtime Engine."""
    manifest = engine.manifest
    directory = Path(engine.directory)
    size = sum((directory / name).stat().st_size for name in manifest.files) + (directory / MANIFEST_FILE).stat().st_size
    digest = hashlib.sha256((directory / MANIFEST_FILE).read_bytes()).hexdigest()
    created = _parse_time(manifest.created) or int((directory / MANIFEST_FILE).stat().st_mtime)
    weights = sum((directory / name).stat().st_size for name in manifest.files if name.startswith(manifest.graph_file))
    if manifest.task == TASK_EMBEDDING:
        if manifest.embedding is None:
            raise ValueError(f"engine {manifest.name!r} is an embedding engine without an 'embedding' section in its manifest")
        context, dimension = manifest.embedding.max_input_tokens, manifest.embedding.dimension
    else:
        context, dimension = manifest.context_length, None
    return ModelInfo(
        name=manifest.name,
        task=manifest.task,
        created=created,
        size_bytes=size,
        digest=digest,
        family=manifest.model_type,
        architecture=manifest.architecture,
        precision=manifest.precision,
        providers=tuple(engine.providers),
        context_length=context,
        parameter_count=int(weights / _BYTES_PER_WEIGHT.get(manifest.precision, 4.0)),
        chat_template=manifest.chat_template,
        embedding_dimension=dimension,
    )


def _parse_time(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def find_engine_dirs(root: Path) -> list[Path]:
    """Engine directories directly under `root` (those with a manifest), by name."""
    if (root / MANIFEST_FILE).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())


class ModelRegistry:
    """Models by name, with the loading state `/health` reports."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._reason = "engines are loading"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, models: Sequence[LoadedModel]) -> ModelRegistry:
        """A registry that is ready at once with `models` (tests, library use)."""
        registry = cls()
        registry._finish(list(models))
        return registry

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> Literal["loading", "ready", "failed"]:
        """'loading', 'ready' or 'failed'."""
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    def _finish(self, models: list[LoadedModel]) -> None:
        with self._lock:
            self._models = {m.name: m for m in models}
            self._state, self._reason = "ready", f"{len(models)} model(s) loaded"

    def _fail(self, reason: str) -> None:
        with self._lock:
            self._state, self._reason = "failed", reason

    def load_in_background(self, load: Callable[[], list[LoadedModel]]) -> threading.Thread:
        """Run `load` on a thread; the registry is ready when it returns, failed if it raises."""

        def run() -> None:
            try:
                self._finish(load())
            except Exception as exc:  # every failure is reported by /health and each request
                self._fail(f"{type(exc).__name__}: {exc}")

        self._thread = threading.Thread(target=run, name="engine-loader", daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self._state == "ready"

    # -- look-up ------------------------------------------------------------------------

    def models(self) -> list[LoadedModel]:
        self._require_ready()
        return list(self._models.values())

    def get(self, name: str, task: str | None = None) -> LoadedModel:
        """The model called `name` (an Ollama-style ':latest' tag is accepted), for `task`."""
        self._require_ready()
        model = self._models.get(name)
        if model is None and name.endswith(":latest"):
            model = self._models.get(name[: -len(":latest")])
        if model is None:
            raise ModelNotFound(name, sorted(self._models))
        if task is not None and model.info.task != task:
            wanted = "text generation" if task == TASK_TEXT_GENERATION else "embeddings"
            able = ", ".join(sorted(m.name for m in self._models.values() if m.info.task == task)) or "none are loaded"
            raise BadRequest(f"model '{model.name}' is a {model.info.task} model and cannot do {wanted}; models that can: {able}", param="model")
        return model

    def _require_ready(self) -> None:
        if self._state == "loading":
            raise Unavailable(f"the server is starting: {self._reason}; retry in a few seconds", headers={"Retry-After": "5"})
        if self._state == "failed":
            raise Unavailable(f"the engines failed to load: {self._reason}")


def load_models(
    engines_dir: Path,
    settings: RuntimeSettings,
    prefill_chunk: int = 512,
    slots: int = 1,
    queue_limit: int = 64,
    warm: bool = True,
    max_tokens_limit: int | None = None,
    request_timeout_s: float | None = None,
    prefix_cache_tokens: int = 4096,  # runtime.scheduler.DEFAULT_PREFIX_CACHE_TOKENS (the runtime loads lazily here)
    prefix_cache_decoded: bool = False,
    batch_invariant: bool = True,
) -> list[LoadedModel]:
    """Load every engine under `engines_dir`, each into a generator or an embedder, and warm it."""
    from runtime.embeddings import Embedder
    from runtime.engine import load_engine
    from runtime.generation import GenerationRequest, TextGenerator
    from runtime.sampling import SamplingParams

    directories = find_engine_dirs(engines_dir)
    if not directories:
        raise FileNotFoundError(f"no engine directories (with {MANIFEST_FILE}) in {engines_dir}; build them with `make engines` or `appliance export`")
    models = []
    for directory in directories:
        started = time.perf_counter_ns()
        engine = load_engine(directory, settings)
        info = describe_engine(engine)
        if info.task == TASK_EMBEDDING:
            embedder = Embedder(engine)
            model = LoadedModel(info, embedder=embedder)
            if warm:
                embedder.encode(["warming up the engine"])
        else:
            generator = TextGenerator(
                engine, prefill_chunk=prefill_chunk, slots=slots, queue_limit=queue_limit,
                max_tokens_limit=max_tokens_limit, request_timeout_s=request_timeout_s,
                prefix_cache_tokens=prefix_cache_tokens, reuse_decoded=prefix_cache_decoded, batch_invariant=batch_invariant,
            )
            model = LoadedModel(info, generator=generator)
            if warm:  # the first run of a session allocates its buffers; do it before the first user
                generator.warm_up()
                ids = tuple(generator.tokenize("Hello"))
                generator.complete(GenerationRequest(ids, SamplingParams(temperature=0), max_tokens=2))
        model.load_duration_ns = time.perf_counter_ns() - started
        models.append(model)
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two engine directories declare the same model name(s) {duplicates}; rename one (its manifest 'name')")
    return models


if TYPE_CHECKING:  # mypy holds the runtime to the seam the API relies on
    from runtime.embeddings import Embedder
    from runtime.generation import TextGenerator

    _text_model: type[TextModel] = TextGenerator
    _embedding_model: type[EmbeddingModel] = Embedder
