"""What this machine offers a GPU engine: an NVIDIA device, its model, the TensorRT version.

The runtime never imports torch or the TensorRT builder; it asks the driver's own tool
(`nvidia-smi`) for the GPU and the package metadata for TensorRT. Both answers are what a
TensorRT plan cache is tied to (runtime.session refuses a cache built for other ones).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

# The TensorRT wheels NVIDIA publishes, newest naming first (`tensorrt` is a meta package).
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs")


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA device node (the driver is loaded)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


@dataclass(frozen=True)
class GPUIdentity:
    """The first GPU as the driver names it."""

    name: str
    compute_capability: str
    driver: str
    memory_mib: int


@lru_cache(maxsize=1)
def gpu_identity() -> GPUIdentity | None:
    """The first NVIDIA GPU's model, compute capability and driver; None without one (or without nvidia-smi)."""
    tool = shutil.which("nvidia-smi")
    if tool is None or not nvidia_gpu_present():
        return None
    try:
        out = subprocess.run(
            [tool, "--query-gpu=name,compute_cap,driver_version,memory.total", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    fields = [part.strip() for part in out.strip().splitlines()[0].split(",")] if out.strip() else []
    if len(fields) < 4:
        return None
    try:
        memory = int(float(fields[3]))
    except ValueError:
        memory = 0
    return GPUIdentity(fields[0], fields[1], fields[2], memory)


def tensorrt_version() -> str | None:
    """The installed TensorRT's version (from its wheel's metadata), None when it is not installed."""
    for distribution in TENSORRT_DISTRIBUTIONS:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None
