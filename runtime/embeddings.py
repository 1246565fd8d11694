"""Sentence embeddings: tokenize a batch, run the encoder, pool, normalise.

Pooling and normalisation come from the manifest (recorded from the model's
sentence-transformers configuration at export), so vectors match what
sentence-transformers computes for the same model.

Concurrent calls share encoder runs, as text-embeddings-inference batches its requests: each
call queues its inputs (checked first, in the caller's thread), and whichever caller finds
the encoder idle runs everything queued so far — its own inputs and the others' — sorted by
length into batches bounded by rows and padded tokens, and hands each caller its vectors. A
lone call runs at once (nothing waits for company); calls that arrive while a run is under
way go together in the next one. No thread of its own: the callers take turns.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
from tokenizers import Encoding, Tokenizer

from runtime.engine import Engine
from runtime.errors import ContextLengthError, InferenceError, ManifestError, RequestError
from runtime.manifest import TASK_EMBEDDING

# One input of a batcher: token ids (embeddings), or whatever a model reads per row (a reranker's
# pair: ids and token types); its len() is its token count, which the batch bounds count.
Row = TypeVar("Row", bound=Sized)

@dataclass(frozen=True)
class EmbeddingResult:
    """Vectors [n, dimension] in input order and each input's token count."""

    vectors: np.ndarray
    token_counts: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Reduce token states [batch, tokens, dim] to one vector per row, ignoring padding."""
    mask = mask.astype(hidden.dtype)[:, :, None]
    if mode == "mean":
        return (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(mask > 0, hidden, -np.inf).max(axis=1)
    if mode == "last":
        last = mask[:, :, 0].sum(axis=1).astype(np.int64) - 1
        return hidden[np.arange(hidden.shape[0]), last]
    raise ValueError(f"unknown pooling {mode!r}")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


@dataclass
class _Call(Generic[Row]):
    """One caller's inputs, waiting for their vectors."""

    rows: list[Row]
    vectors: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What the encoder ran: calls answered, encoder runs, inputs and padded tokens per run."""

    calls: int = 0
    runs: int = 0
    rows: int = 0
    padded_tokens: int = 0
    largest_run: int = 0  # most inputs in one run
    shared_runs: int = 0  # runs that held inputs of more than one call


@dataclass
class EncodeBatcher(Generic[Row]):
    """Concurrent callers' inputs gathered into shared encoder runs (see the module's docstring).

    `run` turns one batch of rows (token ids; any sized row, e.g. a reranker's pairs) into
    vectors [rows, dimension]; a batch holds at most `batch_size` rows and `max_batch_tokens`
    padded tokens (a single longer row runs alone).
    """

    run: Callable[[list[Row]], np.ndarray]
    dimension: int
    batch_size: int = 32
    max_batch_tokens: int = 16_384
    stats: BatchStats = field(default_factory=BatchStats)
    _queue: deque[_Call[Row]] = field(default_factory=deque)
    _turn: threading.Condition = field(default_factory=threading.Condition)
    _running: bool = False

    def encode(self, rows: list[Row]) -> np.ndarray:
        """Vectors [len(rows), dimension] of `rows`, in their order; the encoder's error if its run failed."""
        call: _Call[Row] = _Call(rows)
        with self._turn:
            self._queue.append(call)
            while not call.done:
                if self._running:
                    self._turn.wait()
                    continue
                self._running = True
                calls = self._take()
                self._turn.release()
                try:
                    self._run_all(calls)
                except BaseException as exc:  # the batcher's own failure: no taken call may wait forever
                    for taken in calls:
                        if not taken.done:
                            taken.error, taken.done = taken.error or exc, True
                finally:
                    self._turn.acquire()
                    self._running = False
                    self._turn.notify_all()  # callers whose inputs ran, and one to run what queued meanwhile
        if call.error is not None:
            raise call.error
        assert call.vectors is not None
        return call.vectors

    def _take(self) -> list[_Call[Row]]:
        """The queued calls that fit one turn's token budget (the first one whatever its size)."""
        taken = [self._queue.popleft()]
        tokens = sum(len(row) for row in taken[0].rows)
        while self._queue:
            size = sum(len(row) for row in self._queue[0].rows)
            if tokens + size > self.max_batch_tokens:
                break
            taken.append(self._queue.popleft())
            tokens += size
        return taken

    def _run_all(self, calls: list[_Call[Row]]) -> None:
        """Run every row of `calls`, shortest first, in bounded batches; each call gets its vectors or its error."""
        rows = [(call, index, row) for call in calls for index, row in enumerate(call.rows)]
        rows.sort(key=lambda item: len(item[2]))
        for call in calls:
            call.vectors = np.empty((len(call.rows), self.dimension), dtype=np.float32)
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and end - start < self.batch_size and (end - start + 1) * len(rows[end][2]) <= self.max_batch_tokens:
                end += 1
            batch = rows[start:end]
            owners = {id(call) for call, _, _ in batch}
            try:
                vectors = self.run([row for _, _, row in batch])
            except BaseException as exc:
                for call, _, _ in batch:
                    call.error = exc
            else:
                for (call, index, _), vector in zip(batch, vectors):
                    assert call.vectors is not None
                    call.vectors[index] = vector
            stats = self.stats
            stats.runs += 1
            stats.rows += len(batch)
            stats.padded_tokens += len(batch) * len(batch[-1][2])
            stats.largest_run = max(stats.largest_run, len(batch))
            stats.shared_runs += len(owners) > 1
            start = end
        for call in calls:
            call.done = True
        self.stats.calls += len(calls)


class Embedder:
    """Encodes texts with an embedding engine; concurrent calls share encoder runs (EncodeBatcher)."""

    def __init__(self, engine: Engine, batch_size: int = 32, max_batch_tokens: int = 16_384) -> None:
        manifest = engine.manifest
        if manifest.task != TASK_EMBEDDING:
            raise ManifestError(f"engine {manifest.name!r} is a {manifest.task} engine, not an embedding model")
        self.engine = engine
        self.spec = manifest.require_embedding()
        self.max_tokens = self.spec.max_input_tokens
        # Two private copies of the tokenizer: one cuts inputs at the model's limit (keeping
        # its special tokens), one never cuts so over-long inputs can be refused.
        self._truncating = Tokenizer.from_str(engine.tokenizer.to_str())
        self._truncating.no_padding()
        self._truncating.enable_truncation(self.max_tokens)
        self._exact = Tokenizer.from_str(engine.tokenizer.to_str())
        self._exact.no_padding()
        self._exact.no_truncation()
        pad = manifest.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._ids = manifest.require_input("token_ids").name
        mask = manifest.input("attention_mask")
        types = manifest.input("token_type_ids")
        self._mask = mask.name if mask else None
        self._types = types.name if types else None
        self._hidden = manifest.require_output("hidden_state").name
        self.batcher: EncodeBatcher[list[int]] = EncodeBatcher(self._run, self.spec.dimension, batch_size, max_batch_tokens)

    @property
    def batch_stats(self) -> BatchStats:
        """What the encoder ran so far (calls, runs, inputs per run)."""
        return self.batcher.stats

    def tokenize(self, texts: Sequence[str], truncate: bool = True) -> list[Encoding]:
        """Encodings of `texts`; with truncate=False an over-long text raises ContextLengthError."""
        if truncate:
            return self._truncating.encode_batch(list(texts))
        encodings = self._exact.encode_batch(list(texts))
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > self.max_tokens:
                raise ContextLengthError(
                    f"input {index} has {len(encoding.ids)} tokens but {self.engine.name} accepts at most "
                    f"{self.max_tokens}; shorten it or allow truncation"
                )
        return encodings

    def token_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """All of `text`'s token ids, never cut (for counting; the model reads at most max_tokens)."""
        return self._exact.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens left out."""
        return self.engine.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode(self, texts: Sequence[str], truncate: bool = True) -> EmbeddingResult:
        """Embed `texts` (shortest first in batches, returned in input order)."""
        return self.encode_ids([e.ids for e in self.tokenize(texts, truncate)])

    def encode_ids(self, inputs: Sequence[Sequence[int]], truncate: bool = False) -> EmbeddingResult:
        """Embed inputs given as this model's token ids, used as they are (special tokens included).

        An input longer than the model accepts is cut at its end with `truncate`, refused otherwise.
        """
        vocab = self.engine.manifest.vocab_size
        rows = []
        for index, ids in enumerate(inputs):
            if not ids:
                raise RequestError(f"input {index} has no tokens", param="input")
            bad = next((i for i in ids if not 0 <= int(i) < vocab), None)
            if bad is not None:
                raise RequestError(f"input {index}: token id {bad} is outside the vocabulary (0..{vocab - 1})", param="input")
            if len(ids) > self.max_tokens:
                if not truncate:
                    raise ContextLengthError(
                        f"input {index} has {len(ids)} tokens but {self.engine.name} accepts at most {self.max_tokens}; shorten it or allow truncation"
                    )
                ids = ids[: self.max_tokens]
            rows.append(list(ids))
        if not rows:
            return EmbeddingResult(np.empty((0, self.spec.dimension), dtype=np.float32), ())
        return EmbeddingResult(self.batcher.encode(rows), tuple(len(r) for r in rows))

    def _run(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {self._ids: ids}
        if self._mask:
            feeds[self._mask] = mask
        if self._types:
            feeds[self._types] = np.zeros_like(ids)
        try:
            (hidden,) = self.engine.session.run([self._hidden], feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise InferenceError(f"engine {self.engine.name!r} failed to embed a batch: {exc}") from exc
        pooled = pool(hidden.astype(np.float32), mask, self.spec.pooling)
        return l2_normalize(pooled) if self.spec.normalize else pooled
