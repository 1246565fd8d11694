"""The OpenAPI document's rerank paths (api/rerank): one operation at /v1/rerank, /v2/rerank and
/rerank, laid out with paths.py's helpers around the components document.py generates."""

from __future__ import annotations

from typing import Any

from api.openapi.paths import _WITH_BODY, _errors, _ok, _operation  # the package's own helpers


def rerank_paths() -> dict[str, Any]:
    """Jina's and Cohere's rerank API, one operation at three paths."""
    failures = _errors("OpenAIError", _WITH_BODY)
    description = (
        "Scores each document against the query with a cross-encoder (a model exported with `task: rerank`) and "
        "answers the documents most relevant first: `index` is the document's position in the request, "
        "`relevance_score` what sentence-transformers' CrossEncoder.predict gives (sigmoid of the logit, unless the "
        "model names another activation). Pairs longer than the model's length are cut as it was trained "
        "(longest_first). Jina's and Cohere's v1 path, Cohere's v2 path and llama.cpp's alias answer the same."
    )
    answer = _ok("The documents, most relevant first (`top_n` of them).", "RerankResponse")
    return {
        path: {"post": _operation(operation_id, "Rank documents by relevance to a query", "Rerank", answer, failures, "RerankRequest", description)}
        for path, operation_id in (("/v1/rerank", "createRerank"), ("/v2/rerank", "createRerankV2"), ("/rerank", "rerank"))
    }
