"""Reranking with a cross-encoder: one relevance score per (query, document) pair.

A cross-encoder reads the query and a document together, as one pair of sequences
(`[CLS] query [SEP] document [SEP]` for BERT, `<s> query </s></s> document </s>` for
XLM-RoBERTa), and its classification head gives one logit. The manifest (recorded at export
from the model's sentence-transformers CrossEncoder settings) says how long a pair may be, how
an over-long pair is cut, and which activation turns the logit into the score, so scores match
`CrossEncoder.predict`:

- truncation is the tokenizer's pair truncation to the trained length; sentence-transformers
  uses "longest_first", which takes a token at a time from whichever text is longer then, so
  a short query is never cut while a long document is (a query longer than the document
  is cut too, down to the document's length, as the model saw in training);
- the activation is sigmoid for one label unless the model's config names another (ms-marco
  cross-encoders name Identity: their scores are raw logits).

Pairs go through the embeddings' `EncodeBatcher`, so concurrent requests share encoder runs
bounded by rows and padded tokens, shortest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from runtime.embeddings import BatchStats, EncodeBatcher
from runtime.engine import Engine
from runtime.errors import ContextLengthError, InferenceError, ManifestError, RequestError
from runtime.manifest import TASK_RERANK


@dataclass(frozen=True)
class Pair:
    """One (query, document) pair as the model reads it: token ids and their segment (0 query, 1 document)."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class RerankResult:
    """Relevance scores [n] in document order, and each pair's token count (after truncation)."""

    scores: np.ndarray
    token_counts: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """The score of each logit: sigmoid (in float64, so large logits saturate cleanly) or the logit itself."""
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    if activation == "identity":
        return logits.astype(np.float32)
    raise ValueError(f"unknown activation {activation!r}")


class Reranker:
    """Scores documents against a query with a rerank engine; concurrent calls share encoder runs."""

    def __init__(self, engine: Engine, batch_size: int = 32, max_batch_tokens: int = 16_384) -> None:
        manifest = engine.manifest
        if manifest.task != TASK_RERANK:
            raise ManifestError(f"engine {manifest.name!r} is a {manifest.task} engine, not a reranker")
        self.engine = engine
        self.spec = manifest.require_rerank()
        self.max_tokens = self.spec.max_input_tokens
        # A private copy of the tokenizer: texts are tokenized whole, then each pair is cut and
        # framed with the special tokens by post_process, as tokenizer(query, doc, truncation=...) does.
        self._tokenizer = Tokenizer.from_str(engine.tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens, strategy=self.spec.truncation)
        pad = manifest.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._ids = manifest.require_input("token_ids").name
        mask = manifest.input("attention_mask")
        types = manifest.input("token_type_ids")
        self._mask = mask.name if mask else None
        self._types = types.name if types else None
        self._logits = manifest.require_output("logits").name
        self.batcher: EncodeBatcher[Pair] = EncodeBatcher(self._run, 1, batch_size, max_batch_tokens)

    @property
    def batch_stats(self) -> BatchStats:
        """What the encoder ran so far (calls, runs, pairs per run)."""
        return self.batcher.stats

    def pairs(self, query: str, documents: Sequence[str], max_tokens_per_doc: int | None = None) -> list[Pair]:
        """The pairs the model reads: each document after the query, cut to the model's length as it was trained.

        `max_tokens_per_doc` first cuts each document to that many of its own tokens (Cohere's field).
        """
        if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
            raise RequestError("max_tokens_per_doc must be at least 1", param="max_tokens_per_doc")
        query_encoding = self._tokenizer.encode(query, add_special_tokens=False)
        pairs = []
        for index, document in enumerate(self._tokenizer.encode_batch(list(documents), add_special_tokens=False)):
            if max_tokens_per_doc is not None and len(document.ids) > max_tokens_per_doc:
                document.truncate(max_tokens_per_doc)
            try:
                pair = self._tokenizer.post_process(_copy(query_encoding), document, add_special_tokens=True)
            except Exception as exc:  # tokenizers: only_second cannot cut a pair whose query alone is too long
                raise ContextLengthError(
                    f"the query has {len(query_encoding.ids)} tokens, which leaves no room for document {index} in the "
                    f"{self.max_tokens} tokens {self.engine.name} reads; shorten the query ({exc})",
                    param="query",
                ) from exc
            pairs.append(Pair(tuple(pair.ids), tuple(pair.type_ids)))
        return pairs

    def rerank(self, query: str, documents: Sequence[str], max_tokens_per_doc: int | None = None) -> RerankResult:
        """One score per document, in the documents' order (higher: more relevant)."""
        pairs = self.pairs(query, documents, max_tokens_per_doc)
        if not pairs:
            return RerankResult(np.empty((0,), dtype=np.float32), ())
        scores = self.batcher.encode(pairs)[:, 0]
        return RerankResult(scores, tuple(len(p) for p in pairs))

    def _run(self, batch: list[Pair]) -> np.ndarray:
        width = max(len(pair) for pair in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, pair in enumerate(batch):
            ids[row, : len(pair)] = pair.ids
            types[row, : len(pair)] = pair.type_ids
            mask[row, : len(pair)] = 1
        feeds = {self._ids: ids}
        if self._mask:
            feeds[self._mask] = mask
        if self._types:
            feeds[self._types] = types
        try:
            (logits,) = self.engine.session.run([self._logits], feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise InferenceError(f"engine {self.engine.name!r} failed to score a batch of pairs: {exc}") from exc
        return activate(np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)[:, :1], self.spec.activation)


def _copy(encoding: Encoding) -> Encoding:
    """A fresh copy of an encoding: post_process truncates its arguments in place."""
    return Encoding.merge([encoding], growing_offsets=False)
