"""ONNX Runtime sessions for engine directories: provider choice and session options."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from runtime.errors import EngineLoadError
from runtime.manifest import Manifest
from runtime.settings import RuntimeSettings

CPU = "CPUExecutionProvider"


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (a GPU build lists CUDA even without a GPU)."""
    return list(ort.get_available_providers())


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA device node (the driver is loaded)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def choose_providers(
    manifest: Manifest,
    settings: RuntimeSettings,
    available: Sequence[str] | None = None,
    gpu_present: bool | None = None,
) -> list[str]:
    """The providers to create the session with, most preferred first, always ending with CPU.

    Explicit settings win; otherwise the engine's intended providers that this onnxruntime
    build offers, GPU ones only when an NVIDIA GPU is present (onnxruntime-gpu lists CUDA
    on machines without one). A provider asked for explicitly but unusable is an error
    rather than a silent fallback. TensorRT is used when the engine or the settings name
    it, never implied: its first run builds engines for minutes.
    """
    have = available_providers() if available is None else list(available)
    gpu = nvidia_gpu_present() if gpu_present is None else gpu_present
    if settings.providers:
        missing = [p for p in settings.providers if p not in have]
        if missing:
            raise EngineLoadError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
                f"(available: {', '.join(have)}); install onnxruntime-gpu on a GPU machine or drop the setting"
            )
        if not gpu and any(p in GPU_PROVIDERS for p in settings.providers):
            raise EngineLoadError(
                f"execution provider(s) {', '.join(p for p in settings.providers if p in GPU_PROVIDERS)} need an "
                "NVIDIA GPU and this machine has none; drop the setting to run on the CPU"
            )
        chosen = list(settings.providers)
    else:
        chosen = [p for p in manifest.execution_providers if p in have and (gpu or p not in GPU_PROVIDERS)]
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
    # ONNX Runtime keeps a memory plan per distinct set of input shapes, and every prompt length
    # is a new one: with it on, a serving process's memory creeps up with the lengths it has
    # seen. The CPU arena reuses its blocks without a plan; paired A/B of decode and prefill
    # showed no change in speed (wall time 0.97x with it off, the machine's noise).
    options.enable_mem_pattern = False
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
