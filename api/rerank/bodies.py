"""The rerank API's request and answer bodies (Jina's and Cohere's shape), declared once: decoded
from bytes, encoded to bytes, and documented in the OpenAPI document.

One request shape serves both APIs: Jina's (`model`, `query`, `documents` as strings, `top_n`,
`return_documents`) and Cohere's (documents may also be objects `{"text": ...}`;
`max_tokens_per_doc` from its v2). The answer has what each reads: `results[{index,
relevance_score, document?}]` sorted by relevance, plus `id` (Cohere), `model` and `usage`
(Jina, llama.cpp).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from api.wire import UNSET, Body, Reply, UnsetType


class RerankDocumentInput(Body, kw_only=True):
    """A document as an object (Cohere's v1 form); only its text is read."""

    text: str


class RerankRequest(Body, kw_only=True):
    """POST /v1/rerank, /rerank, /v2/rerank."""

    model: str
    query: Annotated[str, Meta(description="The text the documents are ranked against.")]
    documents: Annotated[
        list[str | RerankDocumentInput],
        Meta(min_length=1, description="The documents to score, as strings or objects {\"text\": ...}."),
    ]
    top_n: Annotated[int, Meta(ge=1, description="Return only the n most relevant documents (default: all).")] | None = None
    return_documents: Annotated[
        bool, Meta(description="Include each document's text in its result as {\"text\": ...} (default false, as Cohere and llama.cpp).")
    ] | None = None
    max_tokens_per_doc: Annotated[
        int,
        Meta(ge=1, description="Cut each document to this many of its own tokens first (Cohere v2); the pair is then cut to the model's length."),
    ] | None = None


class RerankDocument(Reply, kw_only=True):
    text: str


class RerankResult(Reply, kw_only=True):
    """One document's place in the ranking: its position in the request, and its score."""

    index: int
    relevance_score: float
    # With return_documents only.
    document: RerankDocument | UnsetType = UNSET


class RerankUsage(Reply, kw_only=True):
    """Tokens of every (query, document) pair the model read, special tokens included, after truncation."""

    prompt_tokens: int
    total_tokens: int


class RerankResponse(Reply, kw_only=True):
    id: str
    object: Literal["list"] = "list"
    model: str
    # Most relevant first; ties keep the documents' order.
    results: list[RerankResult]
    usage: RerankUsage
