"""Rerank translation: a request body → the documents to score (`parse`), the scores → the ranked
answer (`ranked`). Pure functions: the route runs the model between them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from api.errors import BadRequest
from api.rerank import bodies as m
from api.settings import ServerSettings


@dataclass(frozen=True)
class RerankPlan:
    """What a rerank request asks for, checked."""

    model: str
    query: str
    documents: list[str]
    top_n: int  # at most len(documents)
    return_documents: bool
    max_tokens_per_doc: int | None


def parse(body: m.RerankRequest, settings: ServerSettings) -> RerankPlan:
    """The request's query and documents as texts; a 400 naming the field for what cannot be served
    (an empty `documents` list never gets here: the body's schema asks for at least one)."""
    if not body.query.strip():
        raise BadRequest("'query' is empty: send the text to rank the documents against", param="query")
    limit = settings.max_rerank_documents
    if len(body.documents) > limit:
        raise BadRequest(
            f"'documents' has {len(body.documents)} documents; this server ranks at most {limit} per request "
            "(--max-rerank-documents): split them over several requests",
            param="documents",
        )
    texts = [document if isinstance(document, str) else document.text for document in body.documents]
    top_n = len(texts) if body.top_n is None else min(body.top_n, len(texts))
    return RerankPlan(body.model, body.query, texts, top_n, bool(body.return_documents), body.max_tokens_per_doc)


def ranked(plan: RerankPlan, scores: Sequence[float], prompt_tokens: int, response_id: str) -> m.RerankResponse:
    """The answer: the `top_n` most relevant documents, most relevant first (ties in the documents' order)."""
    order = sorted(range(len(scores)), key=lambda index: -float(scores[index]))[: plan.top_n]
    results = [
        m.RerankResult(
            index=index,
            relevance_score=float(scores[index]),
            **({"document": m.RerankDocument(text=plan.documents[index])} if plan.return_documents else {}),
        )
        for index in order
    ]
    usage = m.RerankUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)
    return m.RerankResponse(id=response_id, model=plan.model, results=results, usage=usage)
