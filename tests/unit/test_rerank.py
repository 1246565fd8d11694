"""Reranking's pure parts: the manifest's rerank section, the score activation, how a model folder
is recognised as a cross-encoder (or refused), and the API's ranking of scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from api.rerank import bodies, protocol
from api.settings import ServerSettings
from export.errors import UnsupportedModelError
from export.sources import inspect_path
from runtime.errors import ManifestError
from runtime.manifest import STYLE_ENCODER, TASK_RERANK, TASK_TEXT_GENERATION, KVLayout, Manifest, RerankSpec, TensorSpec
from runtime.rerank import activate


def _manifest(**changes: object) -> Manifest:
    fields: dict = dict(
        name="r", task=TASK_RERANK, architecture="BertForSequenceClassification", model_type="bert", style=STYLE_ENCODER,
        graph_file="model.onnx", inputs=(TensorSpec("input_ids", "token_ids", "int64", ("batch", "sequence")),),
        outputs=(TensorSpec("logits", "logits", "float32", ("batch", 1)),), precision="fp32",
        execution_providers=("CPUExecutionProvider",), vocab_size=100, context_length=512, source={}, export_options={},
        rerank=RerankSpec(max_input_tokens=512, activation="identity"),
    )  # fmt: skip
    fields.update(changes)
    return Manifest(**fields)


def test_the_rerank_section_round_trips() -> None:
    manifest = _manifest()
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.rerank == RerankSpec(512, "longest_first", "identity")
    assert again.require_rerank() is again.rerank


def test_a_rerank_manifest_needs_its_section_and_known_values() -> None:
    with pytest.raises(ManifestError, match="needs a rerank section"):
        _manifest(rerank=None)
    with pytest.raises(ManifestError, match="activation"):
        RerankSpec(512, activation="softmax")
    with pytest.raises(ManifestError, match="truncation"):
        RerankSpec(512, truncation="only_first")
    decoder = _manifest(task=TASK_TEXT_GENERATION, rerank=None, kv_cache=KVLayout(1, 1, 1, 16, "float32", True))
    with pytest.raises(ManifestError, match="no rerank section"):
        decoder.require_rerank()


def test_activation_matches_torch() -> None:
    logits = np.array([-40.0, -1.5, 0.0, 2.25, 40.0], dtype=np.float32)
    np.testing.assert_allclose(activate(logits, "sigmoid"), 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-6)
    assert activate(logits, "sigmoid").dtype == np.float32 and np.isfinite(activate(logits, "sigmoid")).all()
    np.testing.assert_array_equal(activate(logits, "identity"), logits)
    with pytest.raises(ValueError):
        activate(logits, "tanh")


def _folder(tmp_path: Path, config: dict, **files: str) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0")
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_a_one_label_classifier_is_a_reranker(tmp_path: Path) -> None:
    config = {"model_type": "xlm-roberta", "architectures": ["XLMRobertaForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    assert inspect_path(_folder(tmp_path, config)).task == TASK_RERANK


def test_a_sentence_transformers_cross_encoder_is_a_reranker(tmp_path: Path) -> None:
    config = {"model_type": "bert", "architectures": ["BertModel"], "num_labels": 1}
    marker = json.dumps({"model_type": "CrossEncoder"})
    source = inspect_path(_folder(tmp_path, config, **{"config_sentence_transformers.json": marker, "modules.json": "[]"}))
    assert source.task == TASK_RERANK


def test_classifiers_of_several_labels_are_refused(tmp_path: Path) -> None:
    config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "id2label": {"0": "NEG", "1": "POS"}}
    with pytest.raises(UnsupportedModelError, match="2 labels"):
        inspect_path(_folder(tmp_path, config))


def test_cross_encoders_of_other_families_are_refused(tmp_path: Path) -> None:
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForSequenceClassification"], "num_labels": 1}
    with pytest.raises(UnsupportedModelError, match="not supported"):
        inspect_path(_folder(tmp_path, config))


def _plan(**body: object) -> protocol.RerankPlan:
    import msgspec

    request = msgspec.convert({"model": "m", "query": "q", "documents": ["a", "b", "c"], **body}, bodies.RerankRequest)
    return protocol.parse(request, ServerSettings())


def test_ranked_sorts_cuts_and_keeps_tied_order() -> None:
    plan = _plan(top_n=2, return_documents=True)
    answer = protocol.ranked(plan, [0.5, 0.9, 0.5], 30, "rerank-1")
    assert [(r.index, r.relevance_score, r.document.text) for r in answer.results] == [(1, 0.9, "b"), (0, 0.5, "a")]  # type: ignore[union-attr]
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens, answer.id, answer.model) == (30, 30, "rerank-1", "m")
    assert [r.index for r in protocol.ranked(_plan(), [0.1, 0.1, 0.1], 3, "x").results] == [0, 1, 2]
    assert _plan(top_n=10).top_n == 3
