"""What every decoder style shares: the `Decoder` seam the scheduler drives, and `DecoderBase`,
the per-slot bookkeeping (cached lengths and token ids, prefix matching) over which a style
supplies its `_step` (runtime/shared_kv.py, runtime/concat_kv.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnxruntime as ort

from runtime.engine import Engine
from runtime.errors import ContextLengthError, InferenceError
from runtime.session import GPU_PROVIDERS

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


class Decoder(Protocol):
    """What the scheduler drives: slots of one engine's KV cache, stepped by prefill and decode.

    The capabilities are stated, not probed: `can_truncate` (a slot's cache can be cut back to
    a prefix: prefix reuse) and `can_move` (slots' caches are host memory the scheduler may
    move and swap to keep the busy slots together).
    """

    slots: int
    max_length: int
    vocab_size: int
    device: str
    can_truncate: bool
    can_move: bool

    def length(self, slot: int) -> int: ...
    def reset(self, slot: int) -> None: ...
    def prefill(self, slot: int, token_ids: Sequence[int] | np.ndarray, logits_to_keep: int = 1) -> np.ndarray: ...
    def decode(self, slots: Sequence[int], tokens: Sequence[int] | np.ndarray) -> np.ndarray: ...
    def common_prefix(self, slot: int, token_ids: Sequence[int] | np.ndarray, exact: bool = True) -> int: ...
    def truncate(self, slot: int, length: int) -> None: ...
    def copy_prefix(self, source: int, target: int, length: int) -> None: ...
    def move(self, source: int, target: int) -> None: ...
    def swap(self, a: int, b: int) -> None: ...


def device_of(engine: Engine) -> str:
    return "cuda" if engine.providers and engine.providers[0] in GPU_PROVIDERS else "cpu"


def contiguous_runs(slots: Sequence[int]) -> list[tuple[int, int]]:
    """Split slot indices into (start index in `slots`, run length) of consecutive slots."""
    runs, start = [], 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] + 1:
            runs.append((start, i - start))
            start = i
    return runs


class DecoderBase(ABC):
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
        self.device = device_of(engine)
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
    # Whether slots' caches are host memory the scheduler may move and swap (`move`, `swap`).
    can_move = False

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

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` cached positions of `source` into `target`."""
        raise NotImplementedError(f"{type(self).__name__} cannot copy cached positions between slots")

    def move(self, source: int, target: int) -> None:
        """Move the sequence in `source` to the free slot `target`."""
        raise NotImplementedError(f"{type(self).__name__} cannot move a cached sequence")

    def swap(self, a: int, b: int) -> None:
        """Exchange the sequences (and caches) of two slots."""
        raise NotImplementedError(f"{type(self).__name__} cannot swap cached sequences")

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
