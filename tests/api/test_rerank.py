"""/v1/rerank, /v2/rerank and /rerank through falcon.testing, with a fake reranker: ranking, top_n,
return_documents, both document shapes, limits and the errors (OpenAI's shape, `param` set)."""

from __future__ import annotations

from collections.abc import Sequence

import falcon.testing
import numpy as np
import pytest

from api.app import create_app
from api.models.registry import LoadedModel, ModelRegistry
from runtime.embeddings import BatchStats
from runtime.manifest import TASK_RERANK
from runtime.rerank import RerankResult
from tests.api.conftest import make_context
from tests.api.fakes import fake_models, info


class FakeReranker:
    """Score: the share of the query's words the document holds; tokens: one per character plus 3."""

    batch_stats = BatchStats()

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], int | None]] = []

    def rerank(self, query: str, documents: Sequence[str], max_tokens_per_doc: int | None = None) -> RerankResult:
        self.calls.append((query, list(documents), max_tokens_per_doc))
        words = set(query.lower().split())
        scores = [len(words & set(d.lower().split())) / len(words) for d in documents]
        return RerankResult(np.asarray(scores, dtype=np.float32), tuple(len(query) + len(d) + 3 for d in documents))


QUERY = "capital of france"
DOCUMENTS = ["Berlin is a city", "Paris is the capital of France", "the capital of Germany", "of course"]


@pytest.fixture
def reranker() -> FakeReranker:
    return FakeReranker()


@pytest.fixture
def make(reranker: FakeReranker):
    def make_client(**settings: object) -> falcon.testing.TestClient:
        models = [
            *fake_models(),
            LoadedModel(info("fake-rerank", TASK_RERANK), reranker=reranker),
            LoadedModel(info("fake-rerank-2", TASK_RERANK), reranker=FakeReranker()),
        ]
        return falcon.testing.TestClient(create_app(make_context(registry=ModelRegistry.of(models), **settings)))

    return make_client


@pytest.fixture
def client(make) -> falcon.testing.TestClient:
    return make()


def _post(client: falcon.testing.TestClient, body: dict, path: str = "/v1/rerank") -> falcon.testing.Result:
    return client.simulate_post(path, json=body)


def test_ranks_most_relevant_first(client, reranker) -> None:
    answer = _post(client, {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    body = answer.json
    assert [r["index"] for r in body["results"]] == [1, 2, 3, 0]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert all("document" not in r for r in body["results"])  # return_documents defaults to false
    tokens = sum(len(QUERY) + len(d) + 3 for d in DOCUMENTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert body["model"] == "fake-rerank" and body["object"] == "list" and body["id"].startswith("rerank-")
    assert reranker.calls == [(QUERY, DOCUMENTS, None)]


def test_top_n_and_return_documents(client) -> None:
    body = _post(client, {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": True}).json
    assert body["results"] == [
        {"index": 1, "relevance_score": 1.0, "document": {"text": DOCUMENTS[1]}},
        {"index": 2, "relevance_score": pytest.approx(2 / 3), "document": {"text": DOCUMENTS[2]}},
    ]
    everything = _post(client, {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": 100}).json
    assert len(everything["results"]) == len(DOCUMENTS)
    nulls = _post(client, {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": None, "return_documents": None}).json
    assert len(nulls["results"]) == len(DOCUMENTS) and "document" not in nulls["results"][0]


def test_cohere_document_objects_and_max_tokens_per_doc(client, reranker) -> None:
    documents = [{"text": DOCUMENTS[0], "title": "ignored"}, DOCUMENTS[1]]
    body = _post(client, {"model": "fake-rerank", "query": QUERY, "documents": documents, "max_tokens_per_doc": 7, "return_documents": True}).json
    assert [(r["index"], r["document"]["text"]) for r in body["results"]] == [(1, DOCUMENTS[1]), (0, DOCUMENTS[0])]
    assert reranker.calls[-1] == (QUERY, DOCUMENTS[:2], 7)


def test_ties_keep_the_documents_order(client) -> None:
    body = _post(client, {"model": "fake-rerank", "query": QUERY, "documents": ["x", "y", "france", "z"]}).json
    assert [r["index"] for r in body["results"]] == [2, 0, 1, 3]


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_every_path_answers_alike(client, path: str) -> None:
    body = {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": 3}
    first, second = _post(client, body).json, _post(client, body, path).json
    assert first["results"] == second["results"] and first["usage"] == second["usage"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "fake-rerank", "query": QUERY, "documents": []}, "documents", "length >= 1"),
        ({"model": "fake-rerank", "query": QUERY}, None, "documents"),
        ({"model": "fake-rerank", "query": "  ", "documents": ["a"]}, "query", "'query' is empty"),
        ({"model": "fake-rerank", "query": QUERY, "documents": ["a"], "top_n": 0}, "top_n", ">= 1"),
        ({"model": "fake-rerank", "query": QUERY, "documents": [1]}, "documents[0]", ""),
        ({"model": "fake-rerank", "query": QUERY, "documents": [{"title": "no text"}]}, "documents[0].text", "text"),
        ({"model": "fake-rerank", "query": QUERY, "documents": ["a"], "max_tokens_per_doc": 0}, "max_tokens_per_doc", ">= 1"),
    ],
)
def test_bad_requests_name_the_field(client, body: dict, param: str | None, words: str) -> None:
    answer = _post(client, body)
    assert answer.status_code == 400, answer.text
    error = answer.json["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]
    if param is not None:
        assert error["param"] == param


def test_document_limit(make) -> None:
    client = make(max_rerank_documents=3)
    answer = _post(client, {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 400
    assert answer.json["error"]["param"] == "documents" and "at most 3" in answer.json["error"]["message"]
    assert _post(client, {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS[:3]}).status_code == 200


def test_a_model_that_is_not_a_reranker_names_the_rerankers(client) -> None:
    for model in ("fake-chat", "fake-embed"):
        answer = _post(client, {"model": model, "query": QUERY, "documents": DOCUMENTS})
        assert answer.status_code == 400
        error = answer.json["error"]
        assert error["param"] == "model"
        assert f"model '{model}'" in error["message"] and "cannot do reranking" in error["message"]
        assert error["message"].endswith("models that can: fake-rerank, fake-rerank-2")


def test_unknown_model_is_404(client) -> None:
    answer = _post(client, {"model": "nope", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 404 and answer.json["error"]["param"] == "model"


def test_a_reranker_cannot_embed_or_chat(client) -> None:
    answer = client.simulate_post("/v1/embeddings", json={"model": "fake-rerank", "input": "x"})
    assert answer.status_code == 400 and "models that can: fake-embed" in answer.json["error"]["message"]


def test_listed_as_a_rerank_model(client) -> None:
    listed = {m["id"]: m["task"] for m in client.simulate_get("/v1/models").json["data"]}
    assert listed["fake-rerank"] == "rerank"


def test_metrics_count_documents_and_tokens(client) -> None:
    _post(client, {"model": "fake-rerank", "query": QUERY, "documents": DOCUMENTS})
    text = client.simulate_get("/metrics").text
    assert 'appliance_reranked_documents_total{model="fake-rerank"} 4.0' in text
    tokens = sum(len(QUERY) + len(d) + 3 for d in DOCUMENTS)
    assert f'appliance_prompt_tokens_total{{model="fake-rerank"}} {float(tokens)}' in text
