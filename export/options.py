"""What `appliance export` may be asked for: the choices, `ExportOptions` (checked as a whole,
before anything is downloaded), where an engine goes by default, and what an export returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.errors import BackendUnavailableError, ExportError
from export.sources import ModelSource
from runtime.gpu import nvidia_gpu_present
from runtime.manifest import (
    TASK_TEXT_GENERATION,
    Manifest,
)
from runtime.session import CPU, CUDA, TENSORRT

if TYPE_CHECKING:
    from export.quantize import WeightQuantization

PRECISIONS = ("fp32", "fp16", "int8", "int4")  # int8/int4: weight-only, block-wise (export/quantize.py)
BACKENDS = ("onnx", "tensorrt")
# Where the engine is meant to run: "cpu" computes in fp32; "cuda" (CUDA and TensorRT engines)
# in fp16, because ONNX Runtime's CUDA GroupQueryAttention runs fp16/bf16 only.
DEVICES = ("auto", "cpu", "cuda")
BUILDERS = ("auto", "gqa", "optimum")
DEFAULT_MAX_CONTEXT = 2048


@dataclass(frozen=True)
class ExportOptions:
    """How to export; recorded verbatim in the manifest."""

    # Weight precision of the engine.
    precision: str = "fp32"
    # Positions the preallocated KV buffer holds (the engine's context length).
    max_context: int = DEFAULT_MAX_CONTEXT
    # "onnx" (ONNX Runtime engine) or "tensorrt" (needs an NVIDIA GPU).
    backend: str = "onnx"
    # "auto": our GQA builder when it covers the architecture, else optimum; or force one.
    builder: str = "auto"
    # Greedy tokens compared with PyTorch per parity prompt.
    parity_tokens: int = 64
    # Quantized precisions only (docs/performance.md has the measurements behind each default):
    # inputs per quantization block, symmetric blocks (else a zero point per block),
    # MatMulNBits accuracy level (4: int8 activations, the fast CPU path) and the precision
    # of the vocabulary projection ("fp32", "int8", "int4").
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 4
    lm_head_precision: str = "int8"
    # "rtn" (round to nearest), "source-blocks" (carry a GGUF's blocks over exactly, as
    # export/blocks.py lists them, quantizing only matrices that are not carried), the other
    # methods of export/quantize.py, or "auto": source-blocks for int4, rtn for int8.
    quant_method: str = "auto"
    # "cpu", "cuda", or "auto": cuda for fp16 and for --backend tensorrt, cpu otherwise.
    device: str = "auto"
    # TensorRT: the largest batch (serve --slots) its optimization profile covers.
    max_batch: int = 32
    # Replace an existing output directory.
    force: bool = False
    # Refuse, before any work, an export the machine lacks the memory or disk for (export/budget.py).
    check_resources: bool = True
    # Bytes of memory the export may use; None: what the machine has available.
    memory_limit: int | None = None

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision {self.precision!r} is not available; choose one of {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise ExportError(f"backend {self.backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise ExportError(f"device {self.device!r} is unknown; choose one of {', '.join(DEVICES)}")
        if self.device == "cpu" and (self.precision == "fp16" or self.backend == "tensorrt"):
            what = "fp16 engines" if self.precision == "fp16" else "TensorRT engines"
            raise ExportError(f"{what} are GPU engines: drop --device cpu (or choose --device cuda); CPU engines are fp32, int8 or int4")
        if self.target_device == "cuda" and self.precision == "fp32":
            raise ExportError(
                "ONNX Runtime's CUDA GroupQueryAttention runs fp16 only: a GPU engine is --precision fp16 "
                "(or int4 / int8 with fp16 scales); fp32 engines are CPU engines"
            )
        if not 1 <= self.max_batch <= 1024:
            raise ExportError(f"--max-batch {self.max_batch} is out of range (1 to 1024)")
        if self.builder not in BUILDERS:
            raise ExportError(f"builder {self.builder!r} is unknown; choose one of {', '.join(BUILDERS)}")
        if not 16 <= self.max_context <= 1 << 20:
            raise ExportError(f"--max-context {self.max_context} is out of range (16 to 1048576)")
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ExportError(f"the memory limit must be more than zero bytes (got {self.memory_limit})")
        if self.parity_tokens < 1:
            raise ExportError("parity needs at least one greedy token per prompt")
        if self.quantization is not None:
            try:
                self.quantization.check()
            except ValueError as exc:
                raise ExportError(f"quantization options: {exc}") from None

    @property
    def target_device(self) -> str:
        """"cpu" or "cuda": where the engine is meant to run."""
        if self.device != "auto":
            return self.device
        return "cuda" if self.precision == "fp16" or self.backend == "tensorrt" else "cpu"

    @property
    def compute_dtype(self) -> str:
        """The dtype of activations, float weights and the KV cache."""
        return "float16" if self.target_device == "cuda" else "float32"

    @property
    def execution_providers(self) -> tuple[str, ...]:
        """The providers the manifest names: GPU engines name no CPU provider (Manifest.requires_gpu)."""
        if self.backend == "tensorrt":
            return (TENSORRT, CUDA)
        return (CUDA,) if self.target_device == "cuda" else (CPU,)

    @property
    def quantization(self) -> WeightQuantization | None:
        """The weight quantization of an int8/int4 export, None for fp32."""
        if self.precision in ("fp32", "fp16"):
            return None
        from export.quantize import WeightQuantization

        bits = int(self.precision[3:])
        method = ("source-blocks" if bits == 4 else "rtn") if self.quant_method == "auto" else self.quant_method
        return WeightQuantization(bits, self.block_size, self.symmetric, self.accuracy_level, self.lm_head_precision, method)


@dataclass
class ExportResult:
    directory: Path
    manifest: Manifest
    parity: dict[str, Any]
    seconds: float


def default_output(source: ModelSource, options: ExportOptions, engines_dir: Path = Path("engines")) -> Path:
    """engines/<name>-<precision> for decoders (-cuda for quantized GPU engines, -trt for TensorRT
    ones: fp16 is a GPU precision already), engines/<name> for embedding models."""
    if source.task != TASK_TEXT_GENERATION:
        return engines_dir / source.name
    suffix = f"-{options.precision}"
    if options.backend == "tensorrt":
        suffix += "-trt"
    elif options.target_device == "cuda" and options.precision != "fp16":
        suffix += "-cuda"
    return engines_dir / f"{source.name}{suffix}"


def check_backend(backend: str) -> None:
    """Refuse a backend this machine cannot build for, with a message that says why.

    TensorRT plans are built for the GPU and TensorRT version at hand, so a TensorRT export
    needs both here; an fp16 CUDA engine (--backend onnx) builds anywhere, and on a machine
    without a GPU its parity check runs on the CPU execution provider.
    """
    if backend != "tensorrt":
        return
    if not nvidia_gpu_present():
        raise BackendUnavailableError(
            "--backend tensorrt needs an NVIDIA GPU and this machine has none (no /dev/nvidiactl): TensorRT builds its plans "
            "for the GPU it runs on; export with --precision fp16 (a CUDA engine) here, or run the TensorRT export on the GPU machine"
        )
    from runtime.gpu import tensorrt_version
    from runtime.session import available_providers

    if TENSORRT not in available_providers() or tensorrt_version() is None:
        raise BackendUnavailableError(
            "--backend tensorrt needs onnxruntime-gpu with its TensorRT execution provider and the tensorrt package "
            f"(this environment has providers {', '.join(available_providers())}, TensorRT {tensorrt_version() or 'not installed'}); "
            "install them with make install-gpu"
        )
