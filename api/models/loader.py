"""How the server reads and loads engine directories with the runtime: `RuntimeLoader`.

`describe_directory` turns an engine's manifest and files into the listing entry (`ModelInfo`)
without loading it; `RuntimeLoader.load` loads the engine into a generator, an embedder or a
reranker and warms it. The registry (api/models/registry.py) calls these through its `EngineLoader` seam,
so tests can hand it fakes. ONNX Runtime is imported only when an engine is loaded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.models.registry import LoadedModel, ModelInfo
from runtime.manifest import MANIFEST_FILE, STYLE_CONCAT_KV, TASK_EMBEDDING, TASK_RERANK, find_engine_dirs
from runtime.settings import GeneratorSettings, RuntimeSettings, takes_generator_settings

if TYPE_CHECKING:
    from runtime.engine import Engine
    from runtime.manifest import Manifest

log = logging.getLogger("appliance.api")

# Bytes per weight of each precision, to state a parameter count from the engine's size.
_BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}



def describe_engine(engine: Engine) -> ModelInfo:
    """A ModelInfo from a loaded runtime Engine."""
    return describe_directory(Path(engine.directory), engine.manifest, tuple(engine.providers))


def describe_directory(directory: Path, manifest: Manifest, providers: tuple[str, ...]) -> ModelInfo:
    """A ModelInfo from an engine directory's manifest and files, and the providers it runs (or would run) on."""
    size = sum((directory / name).stat().st_size for name in manifest.files) + (directory / MANIFEST_FILE).stat().st_size
    digest = hashlib.sha256((directory / MANIFEST_FILE).read_bytes()).hexdigest()
    created = _parse_time(manifest.created) or int((directory / MANIFEST_FILE).stat().st_mtime)
    weights = sum((directory / name).stat().st_size for name in manifest.files if name.startswith(manifest.graph_file))
    if manifest.task == TASK_EMBEDDING:
        if manifest.embedding is None:
            raise ValueError(f"engine {manifest.name!r} is an embedding engine without an 'embedding' section in its manifest")
        context, dimension = manifest.embedding.max_input_tokens, manifest.embedding.dimension
    elif manifest.task == TASK_RERANK:
        context, dimension = manifest.require_rerank().max_input_tokens, None
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
        providers=providers,
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



class RuntimeLoader:
    """Loads engine directories with the runtime, as the server's settings say (`load_models` uses it)."""

    @takes_generator_settings
    def __init__(self, settings: RuntimeSettings, generator: GeneratorSettings | None = None, warm: bool = True, **changes: Any) -> None:
        """`generator`, or GeneratorSettings' fields as keywords (over the defaults, or over `generator`)."""
        self.settings = settings
        self.generator = (generator or GeneratorSettings()).but(**changes)
        self.warm = warm
        self._draft: Engine | None = None  # the draft engine of speculate "draft", loaded at the first text engine

    def describe(self, directory: Path) -> ModelInfo:
        from runtime.errors import EngineLoadError
        from runtime.manifest import read_manifest
        from runtime.session import choose_providers

        manifest = read_manifest(directory)
        try:
            providers = tuple(choose_providers(manifest, self.settings))
        except EngineLoadError:
            providers = manifest.execution_providers  # it cannot run here; loading it says why
        return describe_directory(directory, manifest, providers)

    def verify(self, directory: Path) -> None:
        from runtime.manifest import read_manifest, verify_files

        verify_files(directory, read_manifest(directory))

    def load(self, directory: Path) -> LoadedModel:
        from runtime.embeddings import Embedder
        from runtime.engine import load_engine
        from runtime.generation import TextGenerator
        from runtime.request import GenerationRequest
        from runtime.rerank import Reranker
        from runtime.sampling import SamplingParams

        started = time.perf_counter_ns()
        engine = load_engine(directory, self.settings)
        info = describe_engine(engine)
        if info.task == TASK_EMBEDDING:
            embedder = Embedder(engine)
            model = LoadedModel(info, embedder=embedder, directory=directory)
            if self.warm:
                embedder.encode(["warming up the engine"])
        elif info.task == TASK_RERANK:
            reranker = Reranker(engine)
            model = LoadedModel(info, reranker=reranker, directory=directory)
            if self.warm:
                reranker.rerank("warming up", ["the engine"])
        else:
            if engine.manifest.style == STYLE_CONCAT_KV:
                why = engine.manifest.export_options.get("fallback_reason", "exported with optimum's graph")
                log.warning("%s serves one sequence at a time: its concat-kv graph (%s) has no batched decode; re-export it once our builder covers it", info.name, why)
            generator = TextGenerator(engine, self.generator, draft=self._draft_engine())
            model = LoadedModel(info, generator=generator, directory=directory)
            if self.warm:  # the first run of a session allocates its buffers; do it before the first user
                generator.warm_up()
                ids = tuple(generator.tokenize("Hello"))
                generator.complete(GenerationRequest(ids, SamplingParams(temperature=0), max_tokens=2))
        model.load_duration_ns = time.perf_counter_ns() - started
        return model

    def _draft_engine(self) -> Engine | None:
        """The draft engine, loaded once and shared by every text engine's generator (each has its own draft cache)."""
        if self.generator.speculate != "draft" or self.generator.draft_engine is None:
            return None
        if self._draft is None:
            from runtime.engine import load_engine

            self._draft = load_engine(Path(self.generator.draft_engine), self.settings)
        return self._draft

    def load_all(self, engines_dir: Path) -> list[LoadedModel]:
        """Every engine under `engines_dir`, loaded; two directories may not declare one name."""
        directories = find_engine_dirs(engines_dir)
        if not directories:
            raise FileNotFoundError(f"no engine directories (with {MANIFEST_FILE}) in {engines_dir}; build them with `make engines` or `appliance export`")
        models = [self.load(directory) for directory in directories]
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"two engine directories declare the same model name(s) {duplicates}; rename one (its manifest 'name')")
        return models


@takes_generator_settings
def load_models(engines_dir: Path, settings: RuntimeSettings, warm: bool = True, **generator: Any) -> list[LoadedModel]:
    """Load every engine under `engines_dir`, each into a generator, an embedder or a reranker, and warm it."""
    return RuntimeLoader(settings, warm=warm, **generator).load_all(engines_dir)
