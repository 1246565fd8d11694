"""runtime.memory: what a session's construction frees goes back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from runtime import memory

# Both programs below run in a fresh interpreter, with glibc's malloc and free at hand.
_LIBC = textwrap.dedent(
    """
    import ctypes, resource, sys
    from runtime.memory import building_session

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    """
)

# A large block freed first raises glibc's dynamic mmap threshold; then weights-sized blocks,
# with smaller live ones between them that keep the heap from shrinking, are touched and freed,
# as ONNX Runtime's graph optimizer and weight packing do. Prints the resident MB still held.
_PROGRAM = _LIBC + textwrap.dedent(
    """
    def resident_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def load():
        first = libc.malloc(16 << 20)
        ctypes.memset(first, 1, 16 << 20)
        libc.free(first)  # the dynamic threshold is now 16 MiB
        blocks = []
        for _ in range(40):
            block = libc.malloc(4 << 20)
            ctypes.memset(block, 1, 4 << 20)
            blocks.append(block)
            blocks.append(libc.malloc(256 << 10))  # smaller live blocks between them, from the top
        for block in blocks[::2]:
            libc.free(block)

    before = resident_mb()
    if sys.argv[1] == "tuned":
        with building_session():
            load()
    else:
        load()
    print(resident_mb() - before)
    """
)


def _held_mb(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True, timeout=60)
    return float(result.stdout.strip())


@pytest.mark.skipif(not memory.tunes_allocator(), reason="the allocator tuning is glibc's (Linux); this libc is not glibc")
def test_a_session_build_gives_freed_blocks_back():
    untuned, tuned = _held_mb("plain"), _held_mb("tuned")
    # 160 MiB were touched and freed: glibc's default keeps them resident, the tuned load does not.
    assert untuned > 120, untuned
    assert tuned < 20, tuned


# After a session is built: a serving step's few-MB temporary, allocated and freed fifty
# times with a small block kept above it. Prints the page faults the fifty steps took.
_STEPS = _LIBC + textwrap.dedent(
    """
    with building_session():
        pass

    def step():
        block = libc.malloc(4 << 20)
        ctypes.memset(block, 1, 4 << 20)
        libc.free(block)

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(not memory.tunes_allocator(), reason="the allocator tuning is glibc's (Linux); this libc is not glibc")
def test_after_a_build_steps_reuse_their_pages():
    result = subprocess.run([sys.executable, "-c", _STEPS], capture_output=True, text=True, check=True, timeout=60)
    # A heap trimmed at every free would fault the 1,024 pages of each step in again (51,200).
    assert int(result.stdout.strip()) < 1000, result.stdout


def test_building_session_is_reentrant_across_threads():
    errors: list[BaseException] = []
    started = threading.Barrier(4)

    def load() -> None:
        try:
            started.wait(5)
            with building_session_nested():
                pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert memory._loading == 0


def building_session_nested():
    """Two levels at once, as an engine that loads a helper graph while its main one builds."""
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(memory.building_session())
    stack.enter_context(memory.building_session())
    return stack


def test_release_free_memory_runs_anywhere():
    memory.release_free_memory()  # a no-op without glibc, a trim with it: never an error
