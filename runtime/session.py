"""ONNX Runtime sessions for engine directories: provider choice and session options."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from runtime.errors import EngineLoadError
from runtime.gpu import GPUIdentity, gpu_identity, nvidia_gpu_present, tensorrt_version
from runtime.manifest import Manifest
from runtime.memory import building_session
from runtime.settings import RuntimeSettings

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (a GPU build lists CUDA even without a GPU)."""
    return list(ort.get_available_providers())


def choose_providers(
    manifest: Manifest,
    settings: RuntimeSettings,
    available: Sequence[str] | None = None,
    gpu_present: bool | None = None,
) -> list[str]:
    """The providers to create the session with, most preferred first.

    Explicit settings win; otherwise the engine's intended providers that this onnxruntime
    build offers, GPU ones only when an NVIDIA GPU is present (onnxruntime-gpu lists CUDA
    on machines without one), then CPU for whatever nodes they leave. A provider asked for
    explicitly but unusable is an error rather than a silent fallback, and so is a GPU-only
    engine (fp16, CUDA or TensorRT) on a machine or an onnxruntime build without a GPU:
    it would run on the CPU at a fraction of the speed its user exported it for. Asking for
    CPUExecutionProvider explicitly runs it there anyway (the export's parity check does, on
    machines without a GPU). TensorRT is used when the engine or the settings name it, never
    implied: its first run builds plans for minutes.
    """
    have = available_providers() if available is None else list(available)
    gpu = nvidia_gpu_present() if gpu_present is None else gpu_present
    if settings.providers:
        missing = [p for p in settings.providers if p not in have]
        if missing:
            raise EngineLoadError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
                f"(available: {', '.join(have)}); install onnxruntime-gpu on a GPU machine (make install-gpu) or drop the setting"
            )
        if not gpu and any(p in GPU_PROVIDERS for p in settings.providers):
            raise EngineLoadError(
                f"execution provider(s) {', '.join(p for p in settings.providers if p in GPU_PROVIDERS)} need an "
                "NVIDIA GPU and this machine has none; drop the setting to run on the CPU"
            )
        chosen = list(settings.providers)
    elif manifest.requires_gpu:
        intended = ", ".join(manifest.execution_providers)
        if not gpu:
            raise EngineLoadError(
                f"engine {manifest.name!r} is a GPU engine ({manifest.precision}, {intended}) and this machine has no NVIDIA GPU; "
                "serve a CPU engine here (appliance export ... --device cpu), or pass --providers CPUExecutionProvider "
                "to run this one on the CPU anyway (slowly)"
            )
        chosen = [p for p in manifest.execution_providers if p in have]
        if not chosen:
            raise EngineLoadError(
                f"engine {manifest.name!r} needs {intended}, which this onnxruntime build lacks (it offers {', '.join(have)}); "
                "install the GPU build: make install-gpu (pip install onnxruntime-gpu in place of onnxruntime)"
            )
    else:
        chosen = [p for p in manifest.execution_providers if p in have and (gpu or p not in GPU_PROVIDERS)]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def provider_options(provider: str, directory: Path, manifest: Manifest, settings: RuntimeSettings) -> dict[str, str]:
    """The options one execution provider is created with, from the manifest and the settings."""
    if provider == CUDA:
        options = {"device_id": str(settings.device_id)}
        if settings.cuda_graph:
            # Each decode binding is captured once and replayed (runtime.decoder picks a graph id
            # per binding); every input and output of those runs lives at a fixed device address.
            options["enable_cuda_graph"] = "1"
        return options
    if provider == TENSORRT:
        options = {"device_id": str(settings.device_id)}
        trt = manifest.tensorrt
        if trt is None:
            return options  # asked for explicitly on an engine exported without a TensorRT section: ORT's defaults
        cache = Path(directory) / trt.cache_dir
        options.update(
            trt_fp16_enable="1" if trt.fp16 else "0",
            trt_engine_cache_enable="1",
            trt_engine_cache_path=str(cache),
            trt_timing_cache_enable="1",
            trt_timing_cache_path=str(cache),
            trt_profile_min_shapes=trt.profile_min_shapes,
            trt_profile_opt_shapes=trt.profile_opt_shapes,
            trt_profile_max_shapes=trt.profile_max_shapes,
        )
        return options
    return {}


def check_tensorrt_cache(
    manifest: Manifest, gpu: GPUIdentity | None = None, version: str | None = None, *, probe: bool = True
) -> None:
    """Refuse a TensorRT plan cache built for another GPU model or TensorRT version.

    A plan is specific to both: TensorRT would reject it or quietly rebuild for minutes at
    the first request. `probe` asks this machine (nvidia-smi, the installed wheel) for the
    values not given.
    """
    trt = manifest.tensorrt
    if trt is None or trt.tensorrt_version is None:
        return  # no cache recorded: the first session builds one
    gpu = gpu_identity() if gpu is None and probe else gpu
    version = tensorrt_version() if version is None and probe else version
    problems = []
    if version != trt.tensorrt_version:
        problems.append(f"TensorRT {trt.tensorrt_version} (this machine has {version or 'none installed'})")
    if gpu is None or gpu.name != trt.gpu_name or (trt.compute_capability and gpu.compute_capability != trt.compute_capability):
        here = f"{gpu.name}, compute {gpu.compute_capability}" if gpu else "no GPU nvidia-smi can see"
        problems.append(f"a {trt.gpu_name} (compute {trt.compute_capability}; this machine has {here})")
    if problems:
        raise EngineLoadError(
            f"engine {manifest.name!r}: its TensorRT plans were built for {' and '.join(problems)}; "
            "plans only run where they were built: re-export with --backend tensorrt on this machine"
        )


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
    options.enable_cpu_mem_arena = settings.cpu_arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
    options.log_severity_level = 3
    return options


def create_session(directory: Path, manifest: Manifest, settings: RuntimeSettings) -> ort.InferenceSession:
    """Create the inference session of an engine directory."""
    path = Path(directory) / manifest.graph_file
    providers = choose_providers(manifest, settings)
    if TENSORRT in providers:
        check_tensorrt_cache(manifest)
    configured = [(p, provider_options(p, Path(directory), manifest, settings)) for p in providers]
    try:
        with building_session():  # the load's temporaries go back to the system (runtime/memory.py)
            return ort.InferenceSession(str(path), sess_options=session_options(settings), providers=configured)
    except EngineLoadError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise EngineLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
