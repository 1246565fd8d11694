"""Loading an engine directory: manifest, integrity check, tokenizer, ONNX Runtime session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from runtime.errors import EngineLoadError, ManifestError
from runtime.manifest import Manifest, read_manifest, verify_files
from runtime.session import create_session
from runtime.settings import RuntimeSettings


@dataclass
class Engine:
    """A loaded engine: what the decoder, the embedder and the API need of it."""

    directory: Path
    manifest: Manifest
    session: ort.InferenceSession
    tokenizer: Tokenizer
    load_duration_ns: int

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())


def load_engine(directory: Path | str, settings: RuntimeSettings = RuntimeSettings()) -> Engine:
    """Load `directory` after checking its files against the manifest."""
    started = time.perf_counter_ns()
    directory = Path(directory)
    manifest = read_manifest(directory)
    if settings.verify_files:
        verify_files(directory, manifest)
    tokenizer_path = directory / manifest.tokenizer_file
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # tokenizers raises a bare Exception for bad files
        raise EngineLoadError(f"cannot read tokenizer {tokenizer_path}: {exc}") from exc
    session = create_session(directory, manifest, settings)
    _check_io_names(session, manifest)
    return Engine(directory, manifest, session, tokenizer, time.perf_counter_ns() - started)


def _check_io_names(session: ort.InferenceSession, manifest: Manifest) -> None:
    """The graph's inputs and outputs must be exactly the ones the manifest names."""
    graph_inputs = {i.name for i in session.get_inputs()}
    graph_outputs = {o.name for o in session.get_outputs()}
    named_inputs = {t.name for t in manifest.inputs}
    named_outputs = {t.name for t in manifest.outputs}
    if graph_inputs != named_inputs or not named_outputs <= graph_outputs:
        raise ManifestError(
            f"engine {manifest.name!r}: the graph's tensors do not match its manifest "
            f"(inputs only in graph: {sorted(graph_inputs - named_inputs)}, "
            f"only in manifest: {sorted(named_inputs - graph_inputs)}, "
            f"outputs missing from graph: {sorted(named_outputs - graph_outputs)}); re-export the engine"
        )
