"""`SharedKVDecoder`: our GroupQueryAttention graphs over one preallocated KV pool.

The pool holds, per layer, a key and a value tensor of shape [slots, kv_heads, max_length,
head_dim]. A step over slots [a, a+n) binds the pool's memory at slot a as both the past input
and the present output, so the graph writes the new positions in place: nothing is copied or
reallocated per token. On a GPU (or with `device_side`) the pool lives in ONNX Runtime memory
and slots are copied through the engine's copy graph (`SlotCopier`).
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from runtime.decoder_base import NUMPY_DTYPES, DecoderBase, contiguous_runs
from runtime.engine import Engine
from runtime.errors import InferenceError, ManifestError
from runtime.memory import lazy_zeros, release_pages
from runtime.session import TENSORRT


class SharedKVDecoder(DecoderBase):
    """GroupQueryAttention graph over one preallocated KV pool shared by past and present."""

    # The graph reads a slot's positions up to its length (kv_seqlens) only: shortening the
    # length forgets the positions after it, and the next step overwrites them.
    can_truncate = True

    def __init__(self, engine: Engine, slots: int = 1, batch_invariant: bool = False, device_side: bool | None = None) -> None:
        super().__init__(engine, slots)
        # On the CPU the scheduler keeps busy slots together by moving and swapping host memory;
        # a GPU pool is never compacted (a matching cache is taken over where it is).
        self.can_move = self.device == "cpu"
        # Run one-row decode steps as two rows, so outputs never depend on the batch (_padded_step).
        self.batch_invariant = batch_invariant and slots > 1
        manifest = self.manifest
        kv = manifest.require_kv_cache()
        if not kv.shared_buffer:
            raise ManifestError(f"engine {manifest.name!r} does not declare a shared KV buffer")
        self._seqlens = manifest.require_input("kv_seqlens").name
        self._total = manifest.require_input("total_length").name
        self._keep = manifest.require_input("logits_to_keep").name
        self.dtype = NUMPY_DTYPES[kv.dtype]
        self._slot_shape = (kv.kv_heads, kv.max_length, kv.head_dim)
        self._slot_bytes = int(np.prod(self._slot_shape)) * np.dtype(self.dtype).itemsize
        self.device_side = self.device != "cpu" if device_side is None else bool(device_side)
        self._device_id = engine.device_id
        # The pool: zero-filled so that no position ever holds garbage. On the host it is resident
        # only where positions were written (lazy_zeros), and the OrtValue wraps (and keeps
        # alive) the numpy array. Device-side, each layer's tensors are copied over once (zeros)
        # and the pool has one spare slot past the last, the scratch space of `swap`.
        if self.device_side:
            self._copier = SlotCopier(engine, 2 * kv.layers, self.device, self._device_id)
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
        return contiguous_runs(slots)

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


class SlotCopier:
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
