"""Rerank end to end on tiny random-weight cross-encoders (BertForSequenceClassification, one label):
the real export path, scores against sentence-transformers' CrossEncoder, pair truncation against
transformers' tokenizer, and a real gunicorn server called in Jina's and Cohere's shapes (httpx,
and LangChain's CohereRerank pointed at the server's base URL)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from export.errors import UnsupportedModelError
from export.options import ExportOptions
from export.pipeline import export_model
from runtime.engine import load_engine
from runtime.manifest import PARITY_FILE, TASK_RERANK, read_manifest, verify_files
from runtime.rerank import Reranker
from runtime.settings import RuntimeSettings
from tests.integration.server import Server
from tests.tiny_models import make_tiny_cross_encoder, make_tiny_xlmr_cross_encoder

IDENTITY = "torch.nn.modules.linear.Identity"
LONG = " ".join(["rivers bridges and the history of cities in france, germany and beyond"] * 20)
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "The cat sits on the mat.",
    "",
    LONG,
    "Le café est prêt ; voulez-vous du sucre ?",
    "Berlin is the capital of Germany, and Paris that of France.",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A sentence-transformers CrossEncoder folder (sigmoid) and a legacy one naming Identity, as ms-marco's do."""
    root = tmp_path_factory.mktemp("cross-encoders")
    return {
        "sigmoid": make_tiny_cross_encoder(root / "tiny-reranker"),
        "identity": make_tiny_cross_encoder(root / "tiny-reranker-logits", layout="legacy", activation=IDENTITY),
    }


@pytest.fixture(scope="module")
def engines(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerank-engines")
    return {key: export_model(str(folder), root / folder.name).directory for key, folder in folders.items()}


def _cross_encoder(folder: Path):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(folder), device="cpu", local_files_only=True)


def _reference(folder: Path, query: str, documents: list[str]) -> np.ndarray:
    return np.asarray(_cross_encoder(folder).predict([(query, d) for d in documents], show_progress_bar=False), dtype=np.float32)


# -- export ------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "activation"), [("sigmoid", "sigmoid"), ("identity", "identity")])
def test_export_records_the_cross_encoder_and_its_parity(engines, key: str, activation: str) -> None:
    directory = engines[key]
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    assert manifest.task == TASK_RERANK and manifest.style == "encoder" and manifest.precision == "fp32"
    assert manifest.rerank is not None
    assert (manifest.rerank.max_input_tokens, manifest.rerank.truncation, manifest.rerank.activation) == (48, "longest_first", activation)
    assert manifest.require_output("logits").name == "logits"
    assert manifest.input("token_type_ids") is not None  # BERT's segments: query 0, document 1
    parity = json.loads((directory / PARITY_FILE).read_text())
    assert parity["passed"] and parity["tokenizer_identical"] and parity["max_abs_error"] < 1e-4
    assert parity["activation"] == activation
    assert max(max(q["token_counts"]) for q in parity["queries"]) == 48  # over-long pairs were cut, and compared


def test_an_xlm_roberta_reranker_has_no_token_types_and_matches(tmp_path: Path) -> None:
    """bge-reranker's shape: XLM-RoBERTa, RoBERTa's pair template, no token_type_ids input."""
    folder = make_tiny_xlmr_cross_encoder(tmp_path / "tiny-xlmr-reranker")
    result = export_model(str(folder), tmp_path / "engine")
    assert result.manifest.input("token_type_ids") is None and result.parity["passed"] and result.parity["tokenizer_identical"]
    reranker = Reranker(load_engine(result.directory, RuntimeSettings()))
    np.testing.assert_allclose(reranker.rerank(QUERY, DOCUMENTS).scores, _reference(folder, QUERY, DOCUMENTS), rtol=1e-4, atol=1e-5)
    assert max(reranker.rerank(QUERY, DOCUMENTS).token_counts) == 40


def test_quantized_rerankers_are_refused_saying_so(folders, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="fp32 only"):
        export_model(str(folders["sigmoid"]), tmp_path / "int8", ExportOptions(precision="int8"))
    assert not (tmp_path / "int8").exists()


# -- runtime -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rerankers(engines) -> dict[str, Reranker]:
    return {key: Reranker(load_engine(directory, RuntimeSettings())) for key, directory in engines.items()}


@pytest.mark.parametrize("key", ["sigmoid", "identity"])
def test_scores_match_cross_encoder_predict(rerankers, folders, key: str) -> None:
    ours = rerankers[key].rerank(QUERY, DOCUMENTS).scores
    theirs = _reference(folders[key], QUERY, DOCUMENTS)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert len(set(ours.tolist())) == len(DOCUMENTS)  # distinct scores: the ranking the server gives is well defined


def test_pairs_are_cut_as_transformers_cuts_them(rerankers, folders) -> None:
    reranker, tokenizer = rerankers["sigmoid"], _cross_encoder(folders["sigmoid"]).tokenizer
    long_query = " ".join(["a long question about rivers and bridges"] * 12)
    for query in (QUERY, long_query):
        expected = tokenizer([query] * len(DOCUMENTS), DOCUMENTS, truncation="longest_first", max_length=48)
        pairs = reranker.pairs(query, DOCUMENTS)
        assert [list(p.ids) for p in pairs] == expected["input_ids"]
        assert [list(p.type_ids) for p in pairs] == expected["token_type_ids"]
    # A short query is never cut: the long document gives way, and the whole query is in the pair.
    query_ids = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    pair = reranker.pairs(QUERY, [LONG])[0]
    assert len(pair) == 48 and list(pair.ids[1 : 1 + len(query_ids)]) == query_ids
    # When both are long, both are cut, to (nearly) equal lengths (longest_first).
    cut = reranker.pairs(long_query, [LONG])[0]
    query_kept, document_kept = cut.type_ids.count(0) - 2, cut.type_ids.count(1) - 1
    assert len(cut) == 48 and abs(query_kept - document_kept) <= 1


def test_max_tokens_per_doc_cuts_the_document_first(rerankers) -> None:
    reranker = rerankers["sigmoid"]
    query_tokens = len(reranker.pairs(QUERY, [""])[0]) - 3
    pair = reranker.pairs(QUERY, [LONG], max_tokens_per_doc=5)[0]
    assert len(pair) == query_tokens + 5 + 3
    short = reranker.rerank(QUERY, [LONG], max_tokens_per_doc=5)
    assert short.token_counts == (len(pair),)


def test_batches_and_concurrent_calls_give_the_same_scores(engines) -> None:
    engine = load_engine(engines["sigmoid"], RuntimeSettings())
    alone = Reranker(engine).rerank(QUERY, DOCUMENTS).scores
    small = Reranker(engine, batch_size=2, max_batch_tokens=64)
    np.testing.assert_allclose(small.rerank(QUERY, DOCUMENTS).scores, alone, rtol=1e-5, atol=1e-6)
    assert small.batch_stats.runs >= 3
    shared = Reranker(engine)
    results: dict[int, np.ndarray] = {}

    def call(index: int) -> None:
        results[index] = shared.rerank(QUERY, DOCUMENTS[index:] + DOCUMENTS[:index]).scores

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(DOCUMENTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, scores in results.items():
        np.testing.assert_allclose(scores, np.roll(alone, -index), rtol=1e-5, atol=1e-6)


# -- the server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(engines, tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`appliance serve` on both rerankers and a tiny embedding model."""
    root = next(iter(engines.values())).parent
    export_model(str(tiny_encoder_dir), root / "tiny-embedder")
    running = Server(root, tmp_path_factory.mktemp("rerank-server") / "server.log", "--threads", "4")
    yield running
    assert running.stop() == 0, running.log()


def test_jina_shape(server: Server, folders) -> None:
    body = {"model": "tiny-reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": 3, "return_documents": True}
    answer = httpx.post(f"{server.url}/v1/rerank", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    expected = _reference(folders["sigmoid"], QUERY, DOCUMENTS)
    order = list(np.argsort(-expected, kind="stable")[:3])
    assert [r["index"] for r in results] == order
    assert [r["relevance_score"] for r in results] == pytest.approx([float(expected[i]) for i in order], rel=1e-4)
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[i] for i in order]
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 48


def test_cohere_shape(server: Server, folders) -> None:
    body = {"model": "tiny-reranker-logits", "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS]}
    answer = httpx.post(f"{server.url}/rerank", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    expected = _reference(folders["identity"], QUERY, DOCUMENTS)
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx(sorted((float(s) for s in expected), reverse=True), rel=1e-4, abs=1e-5)
    assert all("document" not in r for r in results)


def test_errors_over_the_wire(server: Server) -> None:
    wrong = httpx.post(f"{server.url}/v1/rerank", json={"model": "tiny-embedder", "query": QUERY, "documents": DOCUMENTS}, timeout=60)
    assert wrong.status_code == 400
    error = wrong.json()["error"]
    assert error["param"] == "model" and error["message"].endswith("models that can: tiny-reranker, tiny-reranker-logits")
    empty = httpx.post(f"{server.url}/v1/rerank", json={"model": "tiny-reranker", "query": QUERY, "documents": []}, timeout=60)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "documents"


def test_langchain_cohere_rerank_against_the_server(server: Server, folders) -> None:
    """LangChain's CohereRerank (cohere's ClientV2 under it) takes a base URL: it calls /v2/rerank."""
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    compressor = CohereRerank(model="tiny-reranker", base_url=server.url, cohere_api_key="unused", top_n=2)
    kept = compressor.compress_documents([Document(page_content=d) for d in DOCUMENTS], QUERY)
    expected = _reference(folders["sigmoid"], QUERY, DOCUMENTS)
    order = list(np.argsort(-expected, kind="stable")[:2])
    assert [d.page_content for d in kept] == [DOCUMENTS[i] for i in order]
    assert [d.metadata["relevance_score"] for d in kept] == pytest.approx([float(expected[i]) for i in order], rel=1e-4)
