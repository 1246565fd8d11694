"""Decoder steps: run a prefill chunk or a batched decode step against the KV cache.

Two graph styles exist (see runtime.manifest):

* `SharedKVDecoder` drives our GroupQueryAttention graphs. The KV pool is allocated once,
  per layer a key and a value tensor of shape [slots, kv_heads, max_length, head_dim]. A
  step over slots [a, a+n) binds the pool's memory at slot a, with shape
  [n, kv_heads, max_length, head_dim], as both the past input and the present output, so
  the graph writes the new positions in place: nothing is copied or reallocated per token.
* `ConcatKVDecoder` drives optimum's graphs, whose present is a fresh tensor holding past
  + new positions. The present OrtValues are fed back as the next past without ever
  leaving ONNX Runtime (no numpy round trip); one sequence per slot, run one at a time.

Both keep, per slot, how many positions are in the cache and which token ids they hold,
and return float32 logits. The shared pool can also keep a finished sequence's positions for
a later prompt that starts with the same tokens (`common_prefix`, `truncate`, `swap`): the
scheduler's prefix reuse.
"""

from __future__ import annotations

import mmap
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from runtime.engine import Engine
from runtime.errors import ContextLengthError, InferenceError, ManifestError
from runtime.manifest import STYLE_CONCAT_KV, STYLE_GQA_SHARED_KV, TASK_TEXT_GENERATION
from runtime.session import GPU_PROVIDERS, TENSORRT

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def open_decoder(
    engine: Engine, slots: int = 1, batch_invariant: bool = False, device_side: bool | None = None
) -> SharedKVDecoder | ConcatKVDecoder:
    """The decoder matching the engine's graph style, with room for `slots` sequences.

    `batch_invariant` (GroupQueryAttention graphs): a lone sequence's steps run as two rows,
    so that its output is bit for bit what it would be in any batch (SharedKVDecoder._padded_step).
    `device_side` (GroupQueryAttention graphs): keep the KV pool and the decode inputs and
    logits in ONNX Runtime memory (OrtValues) instead of numpy arrays; the default is what the
    engine's device needs (True on a GPU). On the CPU it runs the very code a GPU runs.
    """
    manifest = engine.manifest
    if manifest.task != TASK_TEXT_GENERATION:
        raise ManifestError(f"engine {manifest.name!r} is a {manifest.task} engine, not a text generator")
    if manifest.style == STYLE_GQA_SHARED_KV:
        return SharedKVDecoder(engine, slots, batch_invariant, device_side)
    if manifest.style == STYLE_CONCAT_KV:
        return ConcatKVDecoder(engine, slots)
    raise ManifestError(f"engine {manifest.name!r}: no decoder for graph style {manifest.style!r}")


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


def _device_of(engine: Engine) -> str:
    return "cuda" if engine.providers and engine.providers[0] in GPU_PROVIDERS else "cpu"


def _contiguous_runs(slots: Sequence[int]) -> list[tuple[int, int]]:
    """Split slot indices into (start index in `slots`, run length) of consecutive slots."""
    runs, start = [], 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] + 1:
            runs.append((start, i - start))
            start = i
    return runs


class _DecoderBase(ABC):
    """Slot bookkeeping shared by both styles; each style supplies `_step`."""

    def __init__(self, engine: Engine, slots: int) -> None:
        if slots < 1:
            raise ValueError("a decoder needs at least one slot")
        manifest = engine.manifest
        self.engine = engine
        self.session = engine.session
        self.manifest = manifest
        self.slots = slots
        kv = manifest.require_kv_cache()
        self.max_length = kv.max_length
        self.vocab_size = manifest.vocab_size
        self.device = _device_of(engine)
        self.lengths = np.zeros(slots, dtype=np.int64)
        # The token id at every cached position of every slot (valid up to lengths[slot]).
        self.cached_ids = np.zeros((slots, self.max_length), dtype=np.int64)
        # How many leading positions of each slot were written by prompt evaluations of two or
        # more tokens. Only those are offered for reuse: a run over two or more positions gives
        # each row bit for bit what a longer or shorter such run gives it (chunked prefill equals
        # one prefill), but a one-row step (every decode step of a lone sequence, and batched
        # decode steps too) takes other kernels (ONNX Runtime's single-row MatMulNBits, the
        # attention's token path) whose last-bit differences the int8 activation quantization
        # of the int4 engine amplifies: reusing a decoded position could change the output.
        self.exact_lengths = np.zeros(slots, dtype=np.int64)
        layers = kv.layers
        self._ids = manifest.require_input("token_ids").name
        self._logits = manifest.require_output("logits").name
        self._past = [(manifest.require_input("past_key", i).name, manifest.require_input("past_value", i).name) for i in range(layers)]
        self._present = [
            (manifest.require_output("present_key", i).name, manifest.require_output("present_value", i).name) for i in range(layers)
        ]

    def length(self, slot: int) -> int:
        """Positions already in the cache of `slot`."""
        return int(self.lengths[slot])

    def reset(self, slot: int) -> None:
        """Forget the sequence in `slot`; its positions will be overwritten."""
        self.lengths[slot] = 0
        self.exact_lengths[slot] = 0

    # Whether a slot's cache can be cut back to a prefix of its positions (`truncate`).
    can_truncate = False

    def common_prefix(self, slot: int, token_ids: Sequence[int] | np.ndarray, exact: bool = True) -> int:
        """How many leading `token_ids` the cache of `slot` holds, in order: from prompt evaluations
        only (the positions that can be reused without changing any output; see exact_lengths),
        or with `exact` False from decode steps too."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        n = min(len(ids), int(self.lengths[slot]), int(self.exact_lengths[slot] if exact else self.lengths[slot]))
        if n == 0:
            return 0
        differ = np.flatnonzero(self.cached_ids[slot, :n] != ids[:n])
        return int(differ[0]) if len(differ) else n

    def truncate(self, slot: int, length: int) -> None:
        """Keep only the first `length` cached positions of `slot`."""
        if not self.can_truncate:
            raise ValueError(f"{type(self).__name__} cannot cut a cached sequence short")
        self.lengths[slot] = min(int(self.lengths[slot]), max(0, int(length)))
        self.exact_lengths[slot] = min(int(self.exact_lengths[slot]), int(self.lengths[slot]))

    def _check_room(self, slot: int, new: int) -> None:
        total = int(self.lengths[slot]) + new
        if total > self.max_length:
            raise ContextLengthError(
                f"{total} positions needed ({int(self.lengths[slot])} cached + {new} new) but the engine's "
                f"KV cache holds {self.max_length}; shorten the prompt or re-export with a larger --max-context"
            )

    def _run(self, binding: ort.IOBinding, options: ort.RunOptions | None = None) -> None:
        try:
            self.session.run_with_iobinding(binding, options)
        except Exception as exc:  # onnxruntime's own exception types
            raise InferenceError(f"engine {self.manifest.name!r} failed a step: {exc}") from exc

    def decode(self, slots: Sequence[int], tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Append one token to each of `slots`; return next-token logits [len(slots), vocab]."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) != len(slots):
            raise ValueError("one token per slot")
        out = np.empty((len(slots), self.vocab_size), dtype=np.float32)
        for start, count in self._decode_groups(slots):
            first = slots[start]
            out[start : start + count] = self._step(first, tokens[start : start + count, None], 1)[:, 0]
            rows = np.arange(first, first + count)
            self.cached_ids[rows, self.lengths[rows] - 1] = tokens[start : start + count]
        return out

    def prefill(self, slot: int, token_ids: Sequence[int] | np.ndarray, logits_to_keep: int = 1) -> np.ndarray:
        """Append `token_ids` to `slot`'s sequence; return logits of its last `logits_to_keep` positions."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("prefill needs at least one token")
        keep = max(1, min(int(logits_to_keep), ids.shape[1]))
        start = int(self.lengths[slot])
        logits = self._step(slot, ids, keep)[0].copy()  # a one-token prefill runs the decode binding, whose buffer is shared
        end = int(self.lengths[slot])
        self.cached_ids[slot, start:end] = ids[0]
        if ids.shape[1] >= 2 and self.exact_lengths[slot] == start:
            self.exact_lengths[slot] = end
        return logits

    def _decode_groups(self, slots: Sequence[int]) -> list[tuple[int, int]]:
        return [(i, 1) for i in range(len(slots))]

    @abstractmethod
    def _step(self, first_slot: int, ids: np.ndarray, keep: int) -> np.ndarray:
        """Run `ids` [n, new] for slots first_slot..first_slot+n-1; logits [n, keep, vocab]."""


class SharedKVDecoder(_DecoderBase):
    """GroupQueryAttention graph over one preallocated KV pool shared by past and present."""

    # The graph reads a slot's positions up to its length (kv_seqlens) only: shortening the
    # length forgets the positions after it, and the next step overwrites them.
    can_truncate = True

    def __init__(self, engine: Engine, slots: int = 1, batch_invariant: bool = False, device_side: bool | None = None) -> None:
        super().__init__(engine, slots)
        # Run one-row decode steps as two rows, so outputs never depend on the batch (_padded_step).
        self.batch_invariant = batch_invariant and slots > 1
        manifest = self.manifest
        kv = manifest.require_kv_cache()
        if not kv.shared_buffer:
            raise ManifestError(f"engine {manifest.name!r} does not declare a shared KV buffer")
        self._seqlens = manifest.require_input("kv_seqlens").name
        self._total = manifest.require_input("total_length").name
        self._keep = manifest.require_input("logits_to_keep").name
        self.dtype = _NUMPY_DTYPES[kv.dtype]
        self._slot_shape = (kv.kv_heads, kv.max_length, kv.head_dim)
        self._slot_bytes = int(np.prod(self._slot_shape)) * np.dtype(self.dtype).itemsize
        self.device_side = self.device != "cpu" if device_side is None else bool(device_side)
        self._device_id = engine.device_id
        # The pool: zero-filled so that no position ever holds garbage. On the host it is resident
        # only where positions were written (lazy_zeros), and the OrtValue wraps (and keeps
        # alive) the numpy array. Device-side, each layer's tensors are copied over once (zeros)
        # and the pool has one spare slot past the last, the scratch space of `swap`.
        if self.device_side:
            self._copier = _SlotCopier(engine, 2 * kv.layers, self.device, self._device_id)
            rows = slots + 1
            self._pool = [
                tuple(ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, *self._slot_shape), self.dtype), self.device, self._device_id) for _ in range(2))
                for _ in range(kv.layers)
            ]  # fmt: skip
            self._host: list[tuple[np.ndarray, ...]] | None = None
        else:
            host = [tuple(lazy_zeros((slots, *self._slot_shape), self.dtype) for _ in range(2)) for _ in range(kv.layers)]
            self._pool = [tuple(ort.OrtValue.ortvalue_from_numpy(array, "cpu", 0) for array in pair) for pair in host]
            self._host = host
        # Per slot, the positions written since its pages were last given back: when a slot
        # comes to hold a shorter sequence, the pages past it are released (_release), so the
        # pool's resident size follows what is cached now, not the longest sequence ever held.
        self._touched = np.zeros(slots, dtype=np.int64)
        self._position_bytes = kv.head_dim * np.dtype(self.dtype).itemsize
        self._pointers = [(k.data_ptr(), v.data_ptr()) for k, v in self._pool]
        self._bindings: dict[tuple[int, int], tuple] = {}
        # One logits buffer for every cached decode binding: a run of slots [first, first+count)
        # writes rows [0, count). A binding per (first, count) with its own buffer would hold up
        # to 136 buffers for 16 slots (160 MB of SmolLM2 logits), filling up as prefills leave
        # gaps between decoding slots. Callers copy the rows out before the next step.
        self._decode_logits = np.empty((self.slots, 1, self.vocab_size), dtype=np.float32)
        # Device-side, a logits tensor per batch size in device memory (a binding needs one
        # whole tensor to read back): only the rows of the step cross to the host.
        self._device_logits: dict[int, ort.OrtValue] = {}
        # CUDA graphs: each decode binding is captured under its own graph id at its first run
        # and replayed after; prefill runs (shapes vary) are never captured.
        self._graph_ids: dict[tuple[int, int], int] = {}
        self._cuda_graph = engine.cuda_graph and self.device_side
        self._uncaptured = _run_options(-1) if self._cuda_graph else None

    # Pages are given back only when this many positions or more would be released (fewer are
    # not worth the system calls: 180 for SmolLM2, one per layer, kind and head).
    RELEASE_MIN_POSITIONS = 64

    def reset(self, slot: int) -> None:
        super().reset(slot)
        self._release(slot)

    def truncate(self, slot: int, length: int) -> None:
        super().truncate(slot, length)
        self._release(slot)

    def _release(self, slot: int) -> None:
        """Give back the pool's pages of `slot` past its cached positions."""
        keep, touched = int(self.lengths[slot]), int(self._touched[slot])
        if self._host is None or touched - keep < self.RELEASE_MIN_POSITIONS:
            return
        heads, length = self._slot_shape[0], self.max_length
        row = self._position_bytes
        for pair in self._host:
            for array in pair:
                for head in range(heads):  # each head's positions are one contiguous run
                    base = ((slot * heads + head) * length) * row
                    # Up to the page that holds the last position touched, within this head's run:
                    # what lies past that position in its page was never written.
                    stop = min(base + length * row, -(-(base + touched * row) // mmap.PAGESIZE) * mmap.PAGESIZE)
                    release_pages(array, base + keep * row, stop)
        self._touched[slot] = keep

    def cache_view(self, layer: int, kind: str) -> np.ndarray:
        """One layer's keys or values [slots, kv_heads, max_length, head_dim]: the live pool
        memory on the host, a copy of it when the pool is device-side (for inspection)."""
        value = self._pool[layer][("key", "value").index(kind)]
        if self._host is None:
            return value.numpy()[: self.slots]
        return self._host[layer][("key", "value").index(kind)]

    def move(self, source: int, target: int) -> None:
        """Move the sequence cached in slot `source` to slot `target` (the scheduler packs slots).

        Only the cached positions are copied: at most max_length × 45 KiB for SmolLM2 in fp32
        (device-side pools copy whole slots, one run of the copy graph: cheap in GPU memory).
        """
        self.copy_prefix(source, target, int(self.lengths[source]))
        self.reset(source)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Make `target` hold the first `length` positions cached in `source` (which keeps them)."""
        length = min(int(length), int(self.lengths[source]))
        if self._host is None:
            self._copy_slot(source, target)
        else:
            for pair in self._host:
                for array in pair:
                    array[target, :, :length] = array[source, :, :length]
        self.cached_ids[target, :length] = self.cached_ids[source, :length]
        self.lengths[target] = length
        self.exact_lengths[target] = min(length, int(self.exact_lengths[source]))
        self._touched[target] = max(int(self._touched[target]), length)
        self._release(target)

    def swap(self, a: int, b: int) -> None:
        """Exchange the sequences cached in slots `a` and `b` (copies only cached positions)."""
        if a == b:
            return
        length_a, length_b = int(self.lengths[a]), int(self.lengths[b])
        if length_a == 0 or length_b == 0:  # one side is empty: a move does it
            source, target = (b, a) if length_a == 0 else (a, b)
            self.move(source, target)
            return
        if self._host is None:
            spare = self.slots  # the pool's scratch slot
            self._copy_slot(a, spare)
            self._copy_slot(b, a)
            self._copy_slot(spare, b)
        else:
            for pair in self._host:
                for array in pair:  # one layer at a time: the spare copy stays small (one slot's layer)
                    spare_rows = array[a, :, :length_a].copy()
                    array[a, :, :length_b] = array[b, :, :length_b]
                    array[b, :, :length_a] = spare_rows
        spare_ids = self.cached_ids[a, :length_a].copy()
        self.cached_ids[a, :length_b] = self.cached_ids[b, :length_b]
        self.cached_ids[b, :length_a] = spare_ids
        self.lengths[a], self.lengths[b] = length_b, length_a
        self.exact_lengths[[a, b]] = self.exact_lengths[[b, a]]
        self._touched[[a, b]] = np.maximum(self._touched[[a, b]], self.lengths[[a, b]])
        self._release(a)
        self._release(b)

    def _copy_slot(self, source: int, target: int) -> None:
        """Copy every cache tensor's slot `source` onto slot `target` in device memory (one run)."""
        self._copier.copy([(k + source * self._slot_bytes, k + target * self._slot_bytes) for pair in self._pointers for k in pair], self._slot_shape, self.dtype)

    def pool_bytes(self) -> int:
        """Bytes held by the KV pool (a device-side pool's scratch slot included)."""
        rows = self.slots + (1 if self._host is None else 0)
        return 2 * len(self._pool) * rows * self._slot_bytes

    def _decode_groups(self, slots: Sequence[int]) -> list[tuple[int, int]]:
        # Consecutive slots share one batched step; the scheduler keeps active slots packed.
        return _contiguous_runs(slots)

    def _bind_cache(self, binding: ort.IOBinding, first_slot: int, count: int) -> None:
        """Bind the pool's memory of slots [first_slot, first_slot+count) as past and present."""
        shape = [count, *self._slot_shape]
        offset = first_slot * self._slot_bytes
        device, device_id = self.device, self._device_id
        for (past_k, past_v), (present_k, present_v), (ptr_k, ptr_v) in zip(self._past, self._present, self._pointers):
            for past, present, ptr in ((past_k, present_k, ptr_k), (past_v, present_v, ptr_v)):
                binding.bind_input(past, device, device_id, self.dtype, shape, ptr + offset)
                binding.bind_output(present, device, device_id, self.dtype, shape, ptr + offset)

    def _step(self, first_slot: int, ids: np.ndarray, keep: int) -> np.ndarray:
        count, new = ids.shape
        lengths = self.lengths[first_slot : first_slot + count]
        if new > 1 and count > 1 and lengths.any():
            raise ValueError("a multi-token step over several slots is only possible for fresh sequences")
        for offset in range(count):
            self._check_room(first_slot + offset, new)
        if new == 1 and keep == 1:
            return self._decode_step(first_slot, ids[:, 0])
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._ids, np.ascontiguousarray(ids))
        binding.bind_cpu_input(self._seqlens, (lengths + new - 1).astype(np.int32))
        binding.bind_cpu_input(self._total, np.array(int(lengths.max()) + new, dtype=np.int32))
        binding.bind_cpu_input(self._keep, np.array([keep], dtype=np.int64))
        self._bind_cache(binding, first_slot, count)
        logits = np.empty((count, keep, self.vocab_size), dtype=np.float32)
        binding.bind_output(self._logits, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self._run(binding, self._uncaptured)
        self.lengths[first_slot : first_slot + count] += new
        np.maximum(self._touched[first_slot : first_slot + count], lengths, out=self._touched[first_slot : first_slot + count])
        return logits

    def _decode_step(self, first_slot: int, tokens: np.ndarray) -> np.ndarray:
        """One token for each of `count` consecutive slots, through a binding built once.

        A decode step over the same slots always binds the same memory: the cache at the
        same offsets, the same logits buffer, and small input arrays wrapped (not copied) by
        OrtValues. So the binding is built the first time and then only the arrays' contents
        change, which saves rebuilding some 125 bindings per step.
        """
        count = len(tokens)
        if count == 1 and self.batch_invariant:
            padded = self._padded_step(first_slot, int(tokens[0]))
            if padded is not None:
                return padded
        logits = self._cached_step(first_slot, count, tokens)
        self.lengths[first_slot : first_slot + count] += 1
        return logits

    def _padded_step(self, slot: int, token: int) -> np.ndarray | None:
        """A lone sequence's decode step run as two rows, beside a neighbouring slot's.

        ONNX Runtime's int4 MatMulNBits takes a single-row kernel for one row, whose rounding
        differs in the last bits from the kernel every larger batch takes (rows of batches of
        two or more agree bit for bit), and the int8 activations amplify that into different
        greedy tokens on near ties. So with `batch_invariant` a one-row step runs two rows:
        the neighbour is fed a token at its own length, which writes one position past what
        it holds (nothing reads it: its length does not move, and its next step overwrites
        it) and its logits are dropped. None when no neighbour has room for that write.
        """
        pad = slot + 1 if slot + 1 < self.slots else slot - 1
        if pad < 0 or int(self.lengths[pad]) >= self.max_length:
            return None
        first = min(slot, pad)
        logits = self._cached_step(first, 2, np.array([token, token]))
        self.lengths[slot] += 1
        return logits[slot - first : slot - first + 1]

    def _cached_step(self, first_slot: int, count: int, tokens: np.ndarray) -> np.ndarray:
        """Run one token for each of slots [first_slot, first_slot+count) through the binding
        built once for them; the caller advances the lengths of the rows that count."""
        cached = self._bindings.get((first_slot, count))
        if cached is None:
            cached = self._bindings[(first_slot, count)] = self._decode_binding(first_slot, count)
        binding, ids, seqlens, total, logits, values = cached
        rows = slice(first_slot, first_slot + count)
        lengths = self.lengths[rows]
        ids[:, 0] = tokens
        seqlens[:] = lengths
        total[...] = self.max_length if self._cuda_graph else int(lengths.max()) + 1
        if self.device_side:
            # Only the new tokens and the cache lengths go over: a few bytes per row.
            values[0].update_inplace(ids)
            values[1].update_inplace(seqlens)
            self._run(binding, self._graph_options(first_slot, count))
            # ...and only this step's logits rows come back.
            return logits.numpy()
        self._run(binding)
        np.maximum(self._touched[rows], lengths + 1, out=self._touched[rows])  # each row wrote the position at its length
        return logits

    def _graph_options(self, first_slot: int, count: int) -> ort.RunOptions | None:
        """The run options of a decode binding: its own CUDA graph id when graphs are on."""
        if not self._cuda_graph:
            return None
        key = (first_slot, count)
        if key not in self._graph_ids:
            self._graph_ids[key] = len(self._graph_ids) + 1  # 0 is ONNX Runtime's default graph; ids stay unique per binding
        return _run_options(self._graph_ids[key])

    def _decode_binding(self, first_slot: int, count: int) -> tuple:
        arrays = (
            np.zeros((count, 1), dtype=np.int64),
            np.zeros(count, dtype=np.int32),
            np.zeros((), dtype=np.int32),
            np.ones(1, dtype=np.int64),
        )
        if self.device_side:
            return self._device_decode_binding(first_slot, count, arrays)
        # OrtValues over numpy memory on the CPU: the graph reads the arrays' current contents.
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        binding = self.session.io_binding()
        for name, value in zip((self._ids, self._seqlens, self._total, self._keep), values):
            binding.bind_ortvalue_input(name, value)
        self._bind_cache(binding, first_slot, count)
        logits = self._decode_logits[:count]
        binding.bind_output(self._logits, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        # Keep the OrtValues (and through them the arrays) alive as long as the binding.
        return binding, arrays[0], arrays[1], arrays[2], logits, values

    def _device_decode_binding(self, first_slot: int, count: int, arrays: tuple[np.ndarray, ...]) -> tuple:
        """A decode binding whose every tensor sits at a fixed address in ONNX Runtime memory.

        Token ids and cache lengths live on the device and are overwritten in place each step
        (update_inplace); the total length and logits_to_keep stay on the host, where the
        attention kernel and Slice read them; the logits are a device tensor per batch size,
        read back after the run. Fixed addresses are also what a CUDA graph replay needs.
        """
        device, device_id = self.device, self._device_id
        ids = ort.OrtValue.ortvalue_from_numpy(arrays[0], device, device_id)
        seqlens = ort.OrtValue.ortvalue_from_numpy(arrays[1], device, device_id)
        host_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays[2:]]  # wrap: the graph reads their contents
        logits = self._device_logits.get(count)
        if logits is None:
            logits = self._device_logits[count] = ort.OrtValue.ortvalue_from_shape_and_type([count, 1, self.vocab_size], np.float32, device, device_id)
        binding = self.session.io_binding()
        for name, value in zip((self._ids, self._seqlens, self._total, self._keep), (ids, seqlens, *host_values)):
            binding.bind_ortvalue_input(name, value)
        self._bind_cache(binding, first_slot, count)
        binding.bind_ortvalue_output(self._logits, logits)
        return binding, arrays[0], arrays[1], arrays[2], logits, (ids, seqlens, *host_values)


def _run_options(graph_id: int) -> ort.RunOptions:
    """Run options that select a CUDA graph (ONNX Runtime's gpu_graph_id; -1: run uncaptured)."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


class _SlotCopier:
    """Copies slots of a device-side KV pool through the engine's copy graph (KVLayout.copy_graph)."""

    def __init__(self, engine: Engine, tensors: int, device: str, device_id: int) -> None:
        kv = engine.manifest.require_kv_cache()
        if not kv.copy_graph:
            raise ManifestError(
                f"engine {engine.manifest.name!r} has no KV copy graph, which a device-side KV pool needs to move slots; "
                "re-export it with this version of the appliance"
            )
        providers = [p for p in engine.providers if p != TENSORRT]  # Identity copies: no plans to build
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(engine.directory / kv.copy_graph), sess_options=options, providers=providers)
        self.tensors, self.device, self.device_id = tensors, device, device_id

    def copy(self, pairs: list[tuple[int, int]], slot_shape: tuple[int, ...], dtype: type) -> None:
        """For each (source address, target address): copy one slot of `slot_shape` elements."""
        if len(pairs) != self.tensors:
            raise ValueError(f"the copy graph copies {self.tensors} tensors, not {len(pairs)}")
        binding = self.session.io_binding()
        shape = [1, *slot_shape]
        for i, (source, target) in enumerate(pairs):
            binding.bind_input(f"source.{i}", self.device, self.device_id, dtype, shape, source)
            binding.bind_output(f"target.{i}", self.device, self.device_id, dtype, shape, target)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime's own exception types
            raise InferenceError(f"copying KV cache slots failed: {exc}") from exc


class ConcatKVDecoder(_DecoderBase):
    """optimum-style graph: the present is past + new; it becomes the next step's past."""

    def __init__(self, engine: Engine, slots: int = 1) -> None:
        super().__init__(engine, slots)
        manifest = self.manifest
        kv = manifest.require_kv_cache()
        mask = manifest.input("attention_mask")
        positions = manifest.input("position_ids")
        self._mask = mask.name if mask else None
        self._positions = positions.name if positions else None
        self.dtype = _NUMPY_DTYPES[kv.dtype]
        self._empty = np.zeros((1, kv.kv_heads, 0, kv.head_dim), dtype=self.dtype)
        self._cache: list[list[ort.OrtValue] | None] = [None] * slots

    def reset(self, slot: int) -> None:
        super().reset(slot)
        self._cache[slot] = None

    def _step(self, first_slot: int, ids: np.ndarray, keep: int) -> np.ndarray:
        if ids.shape[0] != 1:
            raise ValueError("concatenating graphs run one sequence per step")
        slot, new = first_slot, ids.shape[1]
        self._check_room(slot, new)
        past_length = int(self.lengths[slot])
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._ids, np.ascontiguousarray(ids))
        if self._mask:
            binding.bind_cpu_input(self._mask, np.ones((1, past_length + new), dtype=np.int64))
        if self._positions:
            binding.bind_cpu_input(self._positions, np.arange(past_length, past_length + new, dtype=np.int64)[None])
        cache = self._cache[slot]
        for layer, names in enumerate(self._past):
            for kind, name in enumerate(names):
                if cache is None:
                    binding.bind_cpu_input(name, self._empty)
                else:
                    binding.bind_ortvalue_input(name, cache[2 * layer + kind])
        binding.bind_output(self._logits, "cpu")
        for names in self._present:
            for name in names:
                binding.bind_output(name, self.device)
        self._run(binding)
        outputs = binding.get_outputs()
        self._cache[slot] = list(outputs[1:])
        self.lengths[slot] += new
        # The graph computes logits for every position; keep only what was asked for.
        return outputs[0].numpy()[:, -keep:, :].astype(np.float32, copy=False)
