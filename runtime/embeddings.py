"""Sentence embeddings: tokenize a batch, run the encoder, pool, normalise.

Pooling and normalisation come from the manifest (recorded from the model's
sentence-transformers configuration at export), so vectors match what
sentence-transformers computes for the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from runtime.engine import Engine
from runtime.errors import ContextLengthError, InferenceError, ManifestError, RequestError
from runtime.manifest import TASK_EMBEDDING


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


class Embedder:
    """Encodes texts with an embedding engine."""

    def __init__(self, engine: Engine, batch_size: int = 32) -> None:
        manifest = engine.manifest
        if manifest.task != TASK_EMBEDDING:
            raise ManifestError(f"engine {manifest.name!r} is a {manifest.task} engine, not an embedding model")
        self.engine = engine
        self.spec = manifest.require_embedding()
        self.batch_size = batch_size
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
        vectors = np.empty((len(rows), self.spec.dimension), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            vectors[chunk] = self._run([rows[i] for i in chunk])
        return EmbeddingResult(vectors, tuple(len(r) for r in rows))

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
