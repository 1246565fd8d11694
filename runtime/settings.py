"""Runtime configuration: one frozen dataclass, read from the environment only by the CLI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeSettings:
    """How engines are loaded and run."""

    # ONNX Runtime intra-op threads; 0 lets ONNX Runtime use one per physical core.
    intra_op_threads: int = 0
    # Whether idle intra-op threads spin waiting for work: lower latency per step, but a
    # busy core while idle. ONNX Runtime's default is to spin.
    allow_spinning: bool = True
    # Execution providers to use, in order; empty means "the engine's intended providers
    # that this machine has, then CPU".
    providers: tuple[str, ...] = ()
    # GPU engines: the CUDA device to run on, and whether decode steps are captured as CUDA
    # graphs and replayed (less launch overhead per step; fixed shapes per captured batch).
    device_id: int = 0
    cuda_graph: bool = False
    # Check every file's sha256 against the manifest at load (seconds for big engines).
    verify_files: bool = True
    # ONNX Runtime's CPU memory arena: buffers reused between runs without going back to malloc.
    # The export's parity run turns it off: one pass over a few sequences, where a lower peak
    # (the arena keeps its largest extents) matters more than allocation speed.
    cpu_arena: bool = True
