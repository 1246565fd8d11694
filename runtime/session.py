"""ONNX Runtime sessions for engine directories: provider choice and session options."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from runtime.errors import EngineLoadError
from runtime.manifest import Manifest
from runtime.settings import RuntimeSettings

CPU = "CPUExecutionProvider"


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers on this machine."""
    return list(ort.get_available_providers())


def choose_providers(manifest: Manifest, settings: RuntimeSettings) -> list[str]:
    """The providers to create the session with, most preferred first, always ending with CPU.

    Explicit settings win; otherwise the engine's intended providers that this machine has.
    A provider asked for explicitly but missing is an error rather than a silent fallback.
    """
    have = available_providers()
    if settings.providers:
        missing = [p for p in settings.providers if p not in have]
        if missing:
            raise EngineLoadError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
                f"(available: {', '.join(have)}); install onnxruntime-gpu on a GPU machine or drop the setting"
            )
        chosen = list(settings.providers)
    else:
        chosen = [p for p in manifest.execution_providers if p in have]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def session_options(settings: RuntimeSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = settings.intra_op_threads
    # One graph runs at a time per engine (the scheduler thread owns it): no inter-op pool.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
    options.log_severity_level = 3
    return options


def create_session(directory: Path, manifest: Manifest, settings: RuntimeSettings) -> ort.InferenceSession:
    """Create the inference session of an engine directory."""
    path = Path(directory) / manifest.graph_file
    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(settings), providers=choose_providers(manifest, settings)
        )
    except EngineLoadError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise EngineLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
