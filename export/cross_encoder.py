"""Cross-encoder (reranker) exports: a one-label sequence classifier into a `rerank` engine.

The model's settings come from sentence-transformers' own `CrossEncoder`, loaded from the
folder, so the engine scores pairs the way `CrossEncoder.predict` does: the pair length it
truncates to (the tokenizer's model_max_length, capped at the model's positions, or the
folder's max_seq_length), and the activation its config names (`activation_fn` in
config_sentence_transformers.json, or the older `sbert_ce_default_activation_function` in
config.json; sigmoid for one label when neither says).

The graph is optimum's `text-classification` export (logits out). Parity runs the engine on
`RERANK_PARITY` (short and over-long pairs, so truncation is exercised) and compares its token
ids with the transformers tokenizer's and its scores with `CrossEncoder.predict`'s.

export/pipeline.py drives the export (`_export_reranker`). Engines are fp32 only for now: a quantized reranker needs a bar on ranking quality that has
not been measured on real rerankers yet, so int8/int4 exports are refused, saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.errors import UnsupportedModelError
from runtime.manifest import RerankSpec

# What sentence-transformers' activation class paths mean to the runtime (runtime/rerank.py).
ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
}
# fp32 scores may differ from PyTorch's by at most SCORE_ATOL + SCORE_RTOL * |score|.
SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-4

_LONG_DOCUMENT = " ".join(
    ["Paris is the capital and most populous city of France, on the Seine, with museums, cafés and bridges."] * 40
)
# (query, documents): relevant, irrelevant, empty and over-long documents, and an over-long query.
RERANK_PARITY: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "What is the capital of France?",
        ("Paris is the capital of France.", "The cat sits on the mat.", "", _LONG_DOCUMENT, "Berlin is the capital of Germany."),
    ),
    (
        "How do I bake bread at home?",
        ("Mix flour, water, salt and yeast, let it rise, then bake it at 230 °C.", "Le café est prêt ; voulez-vous du sucre ?", "Bread."),
    ),
    (" ".join(["a very long question about rivers, bridges and the history of cities"] * 30), ("Rivers.", _LONG_DOCUMENT)),
)


def cross_encoder_settings(folder: Path) -> RerankSpec:
    """The pair length, truncation and activation sentence-transformers' CrossEncoder uses for `folder`."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    if model.num_labels != 1:
        raise UnsupportedModelError(f"{folder}: the cross-encoder has {model.num_labels} labels; only one-label rerankers can be exported")
    function = model.activation_fn
    path = f"{type(function).__module__}.{type(function).__qualname__}"
    if path not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{folder}: the cross-encoder's activation {path} is not supported; supported are sigmoid and identity "
            "(set activation_fn in config_sentence_transformers.json to one of them)"
        )
    length = model.tokenizer.model_max_length
    positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if positions > 0 and (not length or length > positions):
        length = positions
    if not length or length > 1 << 20:
        raise UnsupportedModelError(f"{folder}: neither the tokenizer nor the config says how long a pair the model reads (model_max_length, max_position_embeddings)")
    return RerankSpec(max_input_tokens=int(length), truncation="longest_first", activation=ACTIVATIONS[path])


def cross_encoder_parity(model_folder: Path, engine_dir: Path) -> dict[str, Any]:
    """Compare the rerank engine in `engine_dir` with sentence-transformers' CrossEncoder on `RERANK_PARITY`."""
    from sentence_transformers import CrossEncoder

    from runtime.engine import load_engine
    from runtime.rerank import Reranker
    from runtime.settings import RuntimeSettings

    reranker = Reranker(load_engine(engine_dir, RuntimeSettings()))
    reference = CrossEncoder(str(model_folder), device="cpu", local_files_only=True)
    records, identical, worst = [], True, 0.0
    for query, documents in RERANK_PARITY:
        ours = reranker.rerank(query, documents)
        pairs = [(query, document) for document in documents]
        theirs = np.asarray(reference.predict(pairs, convert_to_numpy=True, show_progress_bar=False), dtype=np.float32).reshape(-1)
        expected_ids = reference.tokenizer(
            [query] * len(documents), list(documents), truncation="longest_first", max_length=reranker.max_tokens
        )["input_ids"]
        same_ids = [list(p.ids) == list(e) for p, e in zip(reranker.pairs(query, documents), expected_ids)]
        identical = identical and all(same_ids)
        errors = np.abs(ours.scores - theirs)
        within = errors <= SCORE_ATOL + SCORE_RTOL * np.abs(theirs)
        worst = max(worst, float(errors.max()))
        records.append({
            "query_tokens": len(reranker.pairs(query, [""])[0]),
            "documents": len(documents),
            "token_counts": list(ours.token_counts),
            "scores": [float(s) for s in ours.scores],
            "reference_scores": [float(s) for s in theirs],
            "max_abs_error": float(errors.max()),
            "same_order": bool((np.argsort(-ours.scores, kind="stable") == np.argsort(-theirs, kind="stable")).all()),
            "tokenizer_identical": all(same_ids),
            "within_bar": bool(within.all()),
        })  # fmt: skip
    return {
        "kind": "cross-encoder-vs-pytorch",
        "reference": "sentence-transformers CrossEncoder.predict",
        "activation": reranker.spec.activation,
        "max_input_tokens": reranker.max_tokens,
        "truncation": reranker.spec.truncation,
        "queries": records,
        "max_abs_error": worst,
        "score_bar": {"atol": SCORE_ATOL, "rtol": SCORE_RTOL},
        "tokenizer_identical": identical,
        "passed": all(r["within_bar"] for r in records),
    }
