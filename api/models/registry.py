"""The models a server offers: engine directories loaded (after fork), warmed, and looked up by name.

A `ModelRegistry` starts empty and `loading`; `load_in_background()` loads every engine of
a directory on a thread, so the worker answers `/health` with 503 and a reason meanwhile,
then 200 once every engine is loaded and warmed. Tests build a registry from fakes with
`ModelRegistry.of(...)`.

After that a model is *served* whether or not it is loaded: keep-alive unloads it when idle
and the next request loads it again (`api/models/residency.py`), and the engines folder is looked at
again for engines other workers pulled, copied or deleted (`rescan`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from api.errors import BadRequest, ModelNotFound, Unavailable
from api.models.residency import FOREVER, Reaper, RequestLeases, Residency
from runtime.manifest import MANIFEST_FILE, TASK_EMBEDDING, TASK_RERANK, TASK_TEXT_GENERATION, find_engine_dirs

if TYPE_CHECKING:  # the runtime's types, without importing ONNX Runtime before the engines load
    from runtime.embeddings import BatchStats, EmbeddingResult
    from runtime.events import Event
    from runtime.job import SchedulerStats
    from runtime.request import FittedPrompt, GenerationRequest
    from runtime.rerank import RerankResult

log = logging.getLogger("appliance.api")

# What each task is called in the error that refuses a model of another task.
_TASK_WORDS = {TASK_TEXT_GENERATION: "text generation", TASK_EMBEDDING: "embeddings", TASK_RERANK: "reranking"}

@dataclass(frozen=True)
class ModelInfo:
    """What the model listing routes say about an engine."""

    name: str
    task: str  # TASK_TEXT_GENERATION, TASK_EMBEDDING or TASK_RERANK
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

    @property
    def fim_token_ids(self) -> tuple[int, int, int] | None: ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]: ...

    def prepare(self, request: GenerationRequest, prompt_param: str | None = None) -> FittedPrompt:
        """Validate the request and fit its prompt (a prompt that does not fit blames `prompt_param`)."""
        ...

    def generate(self, request: GenerationRequest, heartbeat_s: float | None = None, fitted: FittedPrompt | None = None) -> Events:
        """Queue the request (`fitted`: what prepare made of it, taken as it is) and stream its events."""
        ...

    def stats(self) -> SchedulerStats: ...


class EmbeddingModel(Protocol):
    """What the API needs of an embedder: `runtime.embeddings.Embedder` (or a test fake)."""

    def encode(self, texts: Sequence[str], truncate: bool = True) -> EmbeddingResult: ...

    def encode_ids(self, inputs: Sequence[Sequence[int]], truncate: bool = False) -> EmbeddingResult: ...

    def token_ids(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    def batch_stats(self) -> BatchStats:
        """What the encoder ran so far: concurrent calls share runs."""
        ...


class RerankModel(Protocol):
    """What the API needs of a reranker: `runtime.rerank.Reranker` (or a test fake)."""

    def rerank(self, query: str, documents: Sequence[str], max_tokens_per_doc: int | None = None) -> RerankResult:
        """One relevance score per document, in the documents' order."""
        ...

    @property
    def batch_stats(self) -> BatchStats:
        """What the encoder ran so far: concurrent calls share runs."""
        ...


@dataclass
class LoadedModel:
    """A model ready to serve: a generator (text), an embedder (vectors) or a reranker (relevance scores)."""

    info: ModelInfo
    generator: TextModel | None = None
    embedder: EmbeddingModel | None = None
    reranker: RerankModel | None = None
    load_duration_ns: int = 0
    # The engine directory it was loaded from (None: built in memory, e.g. a test's fake).
    directory: Path | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def busy(self) -> bool:
        """Whether generations are queued or running on it (it must not be unloaded then)."""
        if self.generator is None:
            return False
        stats = self.generator.stats()
        return bool(stats.active or stats.waiting)

    def close(self) -> None:
        """Free the engine: stop the generator's scheduler thread; the session and KV pool go with the last reference."""
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()
        self.generator = self.embedder = self.reranker = None

    def text(self) -> TextModel:
        """The generator; the registry's task check has made sure there is one."""
        if self.generator is None:
            raise BadRequest(f"model '{self.name}' cannot generate text", param="model")
        return self.generator

    def embeddings(self) -> EmbeddingModel:
        if self.embedder is None:
            raise BadRequest(f"model '{self.name}' cannot embed text", param="model")
        return self.embedder

    def reranking(self) -> RerankModel:
        """The reranker; the registry's task check has made sure there is one."""
        if self.reranker is None:
            raise BadRequest(f"model '{self.name}' cannot rerank documents", param="model")
        return self.reranker


class EngineLoader(Protocol):
    """How a registry reads and loads one engine directory (`RuntimeLoader`, or a test's fake)."""

    def describe(self, directory: Path) -> ModelInfo:
        """The model's listing entry from its manifest, without loading it."""
        ...

    def load(self, directory: Path) -> LoadedModel:
        """The engine loaded (and warmed) into a generator or an embedder."""
        ...

    def verify(self, directory: Path) -> None:
        """Check every file against the manifest (runtime.errors.IntegrityError names the one that differs)."""
        ...


@dataclass(frozen=True)
class Use:
    """A model a request holds, and how long this request waited for it to load (0: it was loaded)."""

    model: LoadedModel
    load_ns: int


@dataclass(frozen=True)
class Running:
    """A loaded model as /api/ps lists it."""

    info: ModelInfo
    # Seconds its keep-alive has left (FOREVER: for the server's lifetime).
    expires_in_s: float


@dataclass
class _Served:
    """One served model: what the listings say, where it lives, and its loaded copy."""

    info: ModelInfo
    directory: Path | None
    residency: Residency[LoadedModel]


class ModelRegistry:
    """Models by name, with the loading state `/health` reports, and each model's loaded copy.

    A model is *served* (listed, found by name) from its engine directory whether or not it
    is loaded; `use()` loads it when a request needs it, and keep-alive (`api/models/residency.py`)
    unloads it. With an `engines` folder, names not found (and the listings) look at the
    folder again, so an engine another worker pulled or copied is served here too, and one
    another worker deleted goes. Without a `loader` (a registry of fakes), models are never
    unloaded.
    """

    def __init__(self, loader: EngineLoader | None = None, engines: Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._served: dict[str, _Served] = {}
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._reason = "engines are loading"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loader = loader
        self._engines = engines
        self._clock = clock
        self._reaper = Reaper(self._lock, self._every_residency, clock)
        self._gone: list[Residency[LoadedModel]] = []  # removed while in use: unloaded when idle
        self._skipped: set[Path] = set()  # directories a rescan could not serve (logged once)
        # The keep-alive of requests that send none (the server's --keep-alive; ServerContext sets it).
        self.keep_alive_s = FOREVER

    @classmethod
    def of(cls, models: Sequence[LoadedModel], loader: EngineLoader | None = None, engines: Path | None = None) -> ModelRegistry:
        """A registry that is ready at once with `models` (tests, library use)."""
        registry = cls(loader, engines)
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

    @property
    def engines_folder(self) -> Path | None:
        """The folder of engine directories this registry serves (None: one engine directory, or none)."""
        if self._engines is None or (self._engines / MANIFEST_FILE).is_file():
            return None
        return self._engines

    def _finish(self, models: list[LoadedModel]) -> None:
        with self._lock:
            self._served = {m.name: self._entry(m.info, m.directory, m) for m in models}
            self._state, self._reason = "ready", f"{len(models)} model(s) loaded"

    def _entry(self, info: ModelInfo, directory: Path | None, loaded: LoadedModel | None) -> _Served:
        loader = self._loader
        load = (lambda: loader.load(directory)) if loader is not None and directory is not None else None
        return _Served(info, directory, Residency(loaded, load, self._clock))

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

    def served(self) -> list[ModelInfo]:
        """Every model served, loaded or not (the listings: /api/tags, /v1/models)."""
        self._require_ready()
        self.rescan()
        with self._lock:
            return [entry.info for entry in self._served.values()]

    @property
    def ready(self) -> bool:
        """Whether the engines have loaded (the look-ups below answer only then)."""
        return self._state == "ready"

    def models(self) -> list[LoadedModel]:
        """The models loaded in this worker now."""
        self._require_ready()
        with self._lock:
            return [entry.residency.loaded for entry in self._served.values() if entry.residency.loaded is not None]

    def running(self) -> list[Running]:
        """The models loaded in this worker, with the time their keep-alive has left (/api/ps)."""
        self._require_ready()
        with self._lock:
            return [Running(s.info, s.residency.remaining_s()) for s in self._served.values() if s.residency.loaded is not None]

    def info(self, name: str) -> ModelInfo:
        """What the listings say about `name`, without loading it."""
        self._require_ready()
        return self._find(name).info

    def directory(self, name: str) -> Path | None:
        """The engine directory `name` is served from (None: a model built in memory)."""
        self._require_ready()
        return self._find(name).directory

    def get(self, name: str, task: str | None = None) -> LoadedModel:
        """The model called `name` (an Ollama-style ':latest' tag is accepted), for `task`, loaded."""
        return self.use(name, task).model

    def use(self, name: str, task: str | None = None, keep_alive_s: float | None = None) -> Use:
        """The model called `name`, loaded (again, if it was unloaded), held until the request's answer is sent.

        `keep_alive_s` (None: the server's default) is how long it stays loaded once every
        request holding it is done: 0 unloads it then, FOREVER never.
        """
        self._require_ready()
        entry = self._find(name)
        if task is not None and entry.info.task != task:
            wanted = _TASK_WORDS.get(task, task)
            with self._lock:
                able = ", ".join(sorted(s.info.name for s in self._served.values() if s.info.task == task)) or "none are served"
            raise BadRequest(f"model '{entry.info.name}' is a {entry.info.task} model and cannot do {wanted}; models that can: {able}", param="model")
        leases = RequestLeases.current()
        residency = entry.residency
        if leases is not None:
            with self._lock:
                residency.lease(self.keep_alive_s if keep_alive_s is None else keep_alive_s)
            leases.add(lambda: self._release(residency))
        try:
            model, load_ns = residency.load_or_get(self._lock)
        except LookupError:
            raise ModelNotFound(name, self._names()) from None
        except FileNotFoundError:  # its directory went away (deleted by another worker)
            self._drop(entry)
            raise ModelNotFound(name, self._names()) from None
        if load_ns:
            with self._lock:
                entry.info = model.info  # the providers it really runs on
            log.info("loaded %s on demand in %.1f s", entry.info.name, load_ns / 1e9)
        return Use(model, load_ns)

    def _find(self, name: str) -> _Served:
        for attempt in range(2):
            with self._lock:
                entry = self._served.get(name)
                if entry is None and name.endswith(":latest"):
                    entry = self._served.get(name[: -len(":latest")])
            if entry is not None:
                return entry
            if attempt == 0 and not self.rescan():
                break
        raise ModelNotFound(name, self._names())

    def _names(self) -> list[str]:
        with self._lock:
            return sorted(self._served)

    def _require_ready(self) -> None:
        if self._state == "loading":
            raise Unavailable(f"the server is starting: {self._reason}; retry in a few seconds", headers={"Retry-After": "5"})
        if self._state == "failed":
            raise Unavailable(f"the engines failed to load: {self._reason}")

    # -- the lifecycle ------------------------------------------------------------------

    def _release(self, residency: Residency[LoadedModel]) -> None:
        with self._lock:
            residency.release()
            due = residency.expires_at
        if due is not None:
            if due <= self._clock():
                self._reaper.sweep()  # keep_alive 0: unloaded before the next request can look
            self._reaper.poke()

    def _every_residency(self) -> list[Residency[LoadedModel]]:
        self._gone = [r for r in self._gone if r.loaded is not None]
        return [entry.residency for entry in self._served.values()] + self._gone

    def unload(self, name: str) -> ModelInfo:
        """Ollama's unload call (keep_alive 0, nothing to generate): unload `name` now, or when its last request ends."""
        self._require_ready()
        entry = self._find(name)
        with self._lock:
            entry.residency.expire_now()
        self._reaper.sweep()
        return entry.info

    def add(self, directory: Path, verify: bool = False) -> ModelInfo:
        """Serve the engine in `directory` (just pulled or copied), unloaded until a request needs it; `verify` checks its files first."""
        if self._loader is None:
            raise RuntimeError("this registry has no loader, so it cannot serve new engine directories")
        if verify:
            self._loader.verify(directory)
        info = self._loader.describe(directory)
        with self._lock:
            existing = self._served.get(info.name)
            if existing is not None and existing.directory != directory:
                raise ValueError(f"{directory} declares the model name {info.name!r}, which {existing.directory} already serves")
            if existing is None:
                self._served[info.name] = self._entry(info, directory, None)
        return info

    def remove(self, name: str) -> tuple[ModelInfo, Path | None]:
        """Stop serving `name`: it is unloaded now, or when the requests using it end. Its info and directory."""
        self._require_ready()
        entry = self._find(name)
        self._drop(entry)
        return entry.info, entry.directory

    def _drop(self, entry: _Served) -> None:
        with self._lock:
            if self._served.get(entry.info.name) is entry:
                del self._served[entry.info.name]
            residency = entry.residency
            residency.removed = True
            if residency.loaded is not None:
                self._gone.append(residency)
                if residency.leases == 0:
                    residency.expires_at = self._clock()
        self._reaper.sweep()

    def rescan(self) -> bool:
        """Serve engine directories that appeared in the folder, drop those that went; whether anything changed."""
        folder = self.engines_folder
        if folder is None or self._loader is None or self._state != "ready":
            return False
        try:
            present = find_engine_dirs(folder)
        except OSError:
            return False
        with self._lock:
            known = {entry.directory: entry for entry in self._served.values()}
        changed = False
        for directory in present:
            if directory not in known and directory not in self._skipped:
                try:
                    self.add(directory)
                    changed = True
                except Exception as exc:  # a damaged engine, or a second one of a name, is skipped (once), not fatal
                    self._skipped.add(directory)
                    log.warning("not serving %s: %s", directory, exc)
        present_set = set(present)
        for place, entry in known.items():
            if place is not None and place not in present_set:
                self._drop(entry)
                changed = True
        return changed


if TYPE_CHECKING:  # mypy holds the runtime to the seam the API relies on
    from runtime.embeddings import Embedder
    from runtime.generation import TextGenerator

    _text_model: type[TextModel] = TextGenerator
    _embedding_model: type[EmbeddingModel] = Embedder
