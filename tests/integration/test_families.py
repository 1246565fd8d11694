"""Every decoder family our builder covers, on the shared-KV GroupQueryAttention graph.

Tiny random-weight models of each family (transformers builds them from a config, no
download) are exported once per module. Each must take `gqa-shared-kv`, pass the export's own
fp32 parity (64 greedy tokens per prompt equal to the layer-streamed PyTorch reference's), match
the whole PyTorch model on a prompt longer than its sliding window (or, for Phi-3, past the
LongRoPE switch), and, served by a real gunicorn, give 8 concurrent greedy requests the tokens
each gets alone.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from export.options import ExportOptions
from export.pipeline import export_model
from tests.integration.server import Server

WINDOW = 8  # sliding windows far shorter than the prompts below
LONG_ROPE = {
    "type": "longrope",
    "short_factor": [1.0 + 0.1 * i for i in range(8)],
    "long_factor": [1.5 + 0.5 * i for i in range(8)],
}
# name → (model_type, tied embedding, config fields): each family's own features switched on.
FAMILIES: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "qwen3": ("qwen3", False, {}),
    "qwen3-yarn": ("qwen3", False, {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}}),
    "gemma2": ("gemma2", True, {"query_pre_attn_scalar": 16, "sliding_window": WINDOW, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
    "gemma3": (
        "gemma3_text", True,
        {"query_pre_attn_scalar": 16, "sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"],
         "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_local_base_freq": 10000.0, "rope_theta": 1000000.0},
    ),  # fmt: skip
    # Phi-3.5: LongRoPE switching at 48 positions; Phi-4-mini: partial rotary (half of 32 dims here).
    "phi3": ("phi3", False, {"original_max_position_embeddings": 48, "rope_scaling": LONG_ROPE}),
    "phi4-mini": ("phi3", True, {"hidden_size": 128, "head_dim": 32, "partial_rotary_factor": 0.5}),
    "smollm3": ("smollm3", True, {"num_hidden_layers": 4, "no_rope_layer_interval": 2}),
    "granite": ("granite", True, {"embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0625, "logits_scaling": 8.0}),
    "olmo2": ("olmo2", False, {}),
    "mistral-window": ("mistral", False, {"sliding_window": WINDOW}),
    "qwen2-window": ("qwen2", False, {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
}
LONG_TEXT = (
    "A sliding window of eight positions is far shorter than this prompt, which keeps going on and on "
    "about windows, caches and rotary embeddings so that the early tokens fall out of reach."
)


@pytest.fixture(scope="module")
def family_engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """name → (HF folder, export result), every engine in one engines folder."""
    from tests.tiny_models import make_tiny_llama

    root = tmp_path_factory.mktemp("families")
    built = {}
    for name, (model_type, tie, config) in FAMILIES.items():
        folder = make_tiny_llama(root / "models" / name, model_type=model_type, tie=tie, **config)
        built[name] = (folder, export_model(str(folder), root / "engines" / name, ExportOptions(max_context=512)))
    return built


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_takes_the_shared_kv_graph_with_pytorchs_greedy_tokens(family_engines, name):
    from tests.integration.test_export_tiny import assert_matches_whole_model

    folder, result = family_engines[name]
    assert result.manifest.style == "gqa-shared-kv"
    assert result.parity["greedy_identical"] and all(p["greedy_tokens"] == 64 for p in result.parity["prompts"])
    # Past the window (every family's prompt here is longer than 8 tokens) and, for Phi-3, past the
    # LongRoPE switch at 48 within the prompt itself.
    assert_matches_whole_model(folder, result.directory, LONG_TEXT)


def test_phi3_switches_rotary_factors_where_transformers_does(family_engines):
    """A prompt shorter than original_max_position_embeddings whose greedy tokens cross it: the
    keys before the switch keep the short factors, as transformers' cached decode does."""
    from runtime.engine import load_engine
    from tests.integration.test_export_tiny import assert_matches_whole_model

    folder, result = family_engines["phi3"]
    text = "A short prompt; the switch comes while decoding."
    prompt = len(load_engine(result.directory).tokenizer.encode(text).ids)
    long_prompt = len(load_engine(result.directory).tokenizer.encode(LONG_TEXT).ids)
    assert prompt < 48 < prompt + 40 and long_prompt > 48  # this test's and the one above's sides of the switch
    assert_matches_whole_model(folder, result.directory, text, new_tokens=40)
    graph_inputs = _gqa_input_counts(result.directory)
    assert graph_inputs == {10}  # q, k, v, caches, lengths, cos, sin and position_ids


def _gqa_input_counts(directory: Path) -> set[int]:
    import onnx

    graph = onnx.load(str(directory / "model.onnx"), load_external_data=False).graph
    return {len(n.input) for n in graph.node if n.op_type == "GroupQueryAttention"}


def test_windows_and_soft_caps_reach_the_attention_nodes(family_engines):
    import onnx

    def attributes(name: str) -> list[dict[str, Any]]:
        graph = onnx.load(str(family_engines[name][1].directory / "model.onnx"), load_external_data=False).graph
        return [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in graph.node if n.op_type == "GroupQueryAttention"]

    gemma2 = attributes("gemma2")
    # transformers makes Gemma's even layers slide; both soft-cap.
    assert [a.get("local_window_size") for a in gemma2] == [WINDOW, None] and {a["softcap"] for a in gemma2} == {50.0}
    assert [a.get("local_window_size") for a in attributes("qwen2-window")] == [None, WINDOW]  # from max_window_layers on
    assert [a.get("local_window_size") for a in attributes("mistral-window")] == [WINDOW, WINDOW]
    assert [a.get("local_window_size") for a in attributes("qwen3")] == [None, None]
    assert [a["do_rotary"] for a in attributes("smollm3")] == [1, 0, 1, 0]  # no_rope_layers: 1 = uses rotary


@pytest.fixture(scope="module")
def family_server(family_engines, tmp_path_factory: pytest.TempPathFactory):
    engines = next(iter(family_engines.values()))[1].directory.parent
    running = Server(engines, tmp_path_factory.mktemp("families-log") / "server.log", "--threads", "16", "--slots", "8")
    try:
        yield running
    finally:
        running.stop()


PROMPTS = [f"Request {i}: " + " ".join(["windows", "caches", "heads", "norms"][: 1 + i % 4]) * (1 + i) for i in range(8)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_eight_concurrent_requests_get_the_tokens_each_gets_alone(family_engines, family_server, name):
    model = family_engines[name][1].manifest.name

    def complete(prompt: str) -> list[str]:
        body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1}
        answer = httpx.post(f"{family_server.url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["logprobs"]["tokens"]

    alone = [complete(p) for p in PROMPTS]
    together: list[list[str] | None] = [None] * len(PROMPTS)

    def worker(index: int) -> None:
        together[index] = complete(PROMPTS[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert together == alone and all(alone)


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "phi3", "olmo2"])
def test_quantized_and_gpu_variants_come_from_the_same_builder(family_engines, name, tmp_path):
    """int8 blocks of 32 are near-lossless even on random weights, so a wrongly wired family graph
    shows as low agreement; int4 on random weights is a coin toss and is checked to build only.
    The fp16 (GPU) engine is checked here on the CPU against its own bars (the export fails below them)."""
    folder = family_engines[name][0]
    int8 = export_model(str(folder), tmp_path / "int8", ExportOptions(precision="int8", max_context=512, parity_tokens=4))
    assert int8.manifest.style == "gqa-shared-kv" and int8.parity["versus_fp32"]["top1_agreement"] > 0.8  # tiny llama: 0.91
    int4 = export_model(str(folder), tmp_path / "int4", ExportOptions(precision="int4", max_context=512, parity_tokens=4))
    assert int4.manifest.style == "gqa-shared-kv" and int4.parity["weight_quantization"]["bits"] == 4
    fp16 = export_model(str(folder), tmp_path / "fp16", ExportOptions(precision="fp16", max_context=256, parity_tokens=8))
    assert fp16.manifest.kv_cache.dtype == "float16" and fp16.parity["versus_fp32"]["top1_agreement"] > 0.98
