"""The C allocator while ONNX Runtime builds a session: what the load leaves resident.

glibc's malloc serves a large request with its own memory mapping (returned to the system
when freed) only above a threshold, and raises that threshold to the size of each mapped
block freed, up to 32 MiB. Building a session frees large temporaries early (the graph
optimizer's folded constants, the weights before MatMulNBits packs them), so the later ones,
weights-sized, come from the heap, and what is freed in the middle of a heap stays resident.
Measured with a bare session of a 1B-shaped int4 engine (716 MB): the load peaked at 1.38 GB
and left 1.29 GB resident, of which 1.03 GB was in use (`malloc_trim` gave the rest back).

While a session is built, blocks of 64 KiB and more are mapped on their own, so everything
freed goes back to the system at once: the same engine loads with a 1.13 GB peak and leaves
1.03 GB. Afterwards the heap's free pages are given back, and the thresholds are set where
glibc's dynamic ones end up in a serving process anyway: blocks up to 32 MiB from the heap,
and the heap's top returned only past 64 MiB free. Setting one threshold turns the dynamic
adjustment of both off, and a heap that shrinks at every free of a step's few-MB temporaries
(sampling over the vocabulary) faults their pages in again at the next step: 6.3 against
4.1 ms for such a step in a micro-benchmark.

Only glibc is tuned; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

# mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
LOADING_MMAP_THRESHOLD = 64 * 1024
# DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc: the dynamic threshold's own ceiling; glibc keeps
# the trim threshold at twice the mmap threshold as it adjusts them.
SERVING_MMAP_THRESHOLD = 32 * 1024 * 1024
SERVING_TRIM_THRESHOLD = 2 * SERVING_MMAP_THRESHOLD

_lock = threading.Lock()
_loading = 0  # sessions being built now (engines may load on several threads at once)


def _load_glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


_libc = _load_glibc()


def tunes_allocator() -> bool:
    """Whether this process's allocator is the one `building_session` tunes (glibc)."""
    return _libc is not None


@contextmanager
def building_session() -> Iterator[None]:
    """Run the block (an ONNX Runtime session's construction) with large blocks mapped alone.

    Re-entrant across threads: the threshold goes back up when the last load ends.
    """
    global _loading
    if _libc is None:
        yield
        return
    with _lock:
        _loading += 1
        if _loading == 1:
            _libc.mallopt(_M_MMAP_THRESHOLD, LOADING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _loading -= 1
            if _loading == 0:
                _libc.malloc_trim(0)
                _libc.mallopt(_M_MMAP_THRESHOLD, SERVING_MMAP_THRESHOLD)
                _libc.mallopt(_M_TRIM_THRESHOLD, SERVING_TRIM_THRESHOLD)


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (after an engine is unloaded)."""
    if _libc is not None:
        with _lock:
            _libc.malloc_trim(0)


def lazy_zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A zero-filled array whose pages become resident only where they are written.

    np.zeros would do the same for a large array, but numpy advises the kernel to back big
    allocations with 2 MB transparent huge pages: the first position written in a slot then
    faults in the whole huge page around it, and one step over 16 slots made the entire
    2,048-position pool resident (1.4 GB for SmolLM2) although each sequence held a few
    hundred positions. An anonymous mapping with huge pages refused stays at 4 KiB pages, so
    the pool's resident size follows the positions actually cached.
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size == 0:
        return np.zeros(shape, dtype)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    no_huge_pages = getattr(mmap, "MADV_NOHUGEPAGE", None)  # Linux only; elsewhere pages are small already
    if no_huge_pages is not None:
        memory.madvise(no_huge_pages)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)  # the array keeps the mapping alive


def release_pages(array: np.ndarray, start: int, stop: int) -> None:
    """Give the whole memory pages inside bytes [start, stop) of a lazy_zeros array back to the
    kernel; they read as zeros again and stop counting as resident. Elsewhere: a no-op."""
    mapping: object = array
    while isinstance(mapping, np.ndarray):
        mapping = mapping.base
    if isinstance(mapping, memoryview):
        mapping = mapping.obj
    if not isinstance(mapping, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, (stop // page) * page
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
