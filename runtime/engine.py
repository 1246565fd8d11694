"""Loading an engine directory: manifest, integrity check, tokenizer, ONNX Runtime session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from runtime.chat import ChatTemplate
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
    # The model's chat template, compiled; None when the model has none (completions only).
    chat_template: ChatTemplate | None = None
    # GPU engines: the device the session runs on, and whether decode steps replay CUDA graphs.
    device_id: int = 0
    cuda_graph: bool = False

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
    chat_template = _compile_chat_template(manifest, tokenizer)
    session = create_session(directory, manifest, settings)
    _check_io_names(session, manifest)
    cuda_graph = settings.cuda_graph and "CUDAExecutionProvider" in session.get_providers()
    return Engine(directory, manifest, session, tokenizer, time.perf_counter_ns() - started, chat_template, settings.device_id, cuda_graph)


def _compile_chat_template(manifest: Manifest, tokenizer: Tokenizer) -> ChatTemplate | None:
    if not manifest.chat_template:
        return None

    def token_text(token_id: int | None) -> str:
        return (tokenizer.id_to_token(token_id) or "") if token_id is not None else ""

    eos = manifest.eos_token_ids[0] if manifest.eos_token_ids else None
    return ChatTemplate.compile(manifest.chat_template, bos_token=token_text(manifest.bos_token_id), eos_token=token_text(eos))


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
