"""End-to-end exports of tiny synthetic models: graph shape, manifest, parity, runtime steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.errors import ExportError, UnsupportedModelError
from export.options import ExportOptions
from export.pipeline import export_model
from runtime.decoder import ConcatKVDecoder, SharedKVDecoder, open_decoder
from runtime.embeddings import Embedder
from runtime.engine import load_engine
from runtime.errors import ContextLengthError
from runtime.manifest import PARITY_FILE, read_manifest, verify_files
from tests.graph_checks import kv_path_problems


def load_graph(directory: Path):
    import onnx

    return onnx.load(str(directory / "model.onnx"), load_external_data=False).graph


# -- our GroupQueryAttention builder ----------------------------------------------------


def test_kv_path_has_no_concat_and_is_one_shared_buffer(tiny_llama_engine):
    manifest = tiny_llama_engine.manifest
    assert manifest.style == "gqa-shared-kv"
    assert kv_path_problems(tiny_llama_engine.directory, manifest) == []


def test_the_kv_check_can_fail(gpt2_engine):
    # The optimum graph concatenates past and present: the same check must object to it.
    problems = kv_path_problems(gpt2_engine.directory, gpt2_engine.manifest)
    assert any("Concat" in p for p in problems) and "manifest does not declare a shared buffer" in problems


def test_parity_is_recorded_and_exact(tiny_llama_engine):
    parity = json.loads((tiny_llama_engine.directory / PARITY_FILE).read_text())
    assert parity["greedy_identical"] and parity["tokenizer_identical"]
    assert parity["greedy_tokens_per_prompt"] == 64
    assert parity["longest_prompt_tokens"] > 512
    assert any(not r["name"].isascii() or r["name"] in ("french", "cjk-emoji") for r in parity["prompts"])
    assert parity["max_abs_logit_error"] < 1e-2
    assert all(r["first_divergence"] is None for r in parity["prompts"])


def test_manifest_is_complete_and_hashes_every_file(tiny_llama_engine):
    directory = tiny_llama_engine.directory
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    assert set(manifest.files) == {"model.onnx", "model.onnx.data", "kv_copy.onnx", "tokenizer.json", PARITY_FILE}
    assert manifest.kv_cache.copy_graph == "kv_copy.onnx"  # the slot-to-slot copy of device-side pools
    assert manifest.kv_cache.layers == 2 and manifest.kv_cache.kv_heads == 2 and manifest.kv_cache.head_dim == 16
    roles = {(t.role, t.layer) for t in manifest.inputs + manifest.outputs}
    for layer in range(2):
        for role in ("past_key", "past_value", "present_key", "present_value"):
            assert (role, layer) in roles
    assert manifest.eos_token_ids == (2,) and manifest.bos_token_id == 1
    assert "<|im_start|>" in manifest.chat_template
    assert manifest.source["kind"] == "hf" and len(manifest.source["sha256"]) == 64
    assert manifest.export_options["max_context"] == 2048 and manifest.export_options["builder_used"] == "gqa"
    assert {"onnxruntime", "torch", "transformers"} <= set(manifest.exporter)
    assert not list(directory.parent.glob(".*partial*"))


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama_engine):
    return load_engine(tiny_llama_engine.directory)


def test_chunked_prefill_equals_one_shot(tiny_engine):
    ids = tiny_engine.tokenizer.encode("Chunked prefill must not change a single logit of the prompt.").ids
    decoder = open_decoder(tiny_engine, slots=2)
    assert isinstance(decoder, SharedKVDecoder)
    whole = decoder.prefill(0, ids, logits_to_keep=len(ids))
    parts = [decoder.prefill(1, ids[a:b], logits_to_keep=b - a) for a, b in ((0, 5), (5, 6), (6, len(ids)))]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-4)
    # Both caches now hold the same positions: the next step must agree too.
    both = decoder.decode([0, 1], [7, 7])
    np.testing.assert_allclose(both[0], both[1], atol=1e-4)


def test_steps_write_into_the_preallocated_pool_in_place(tiny_engine):
    decoder = open_decoder(tiny_engine, slots=3)
    keys = decoder.cache_view(1, "key")  # layer 1, [slots, kv_heads, max_length, head_dim]
    address = keys.ctypes.data
    decoder.prefill(1, [5, 6, 7, 8])
    decoder.decode([1, 2], [9, 9])
    assert keys.ctypes.data == address  # never reallocated
    assert np.abs(keys[1, :, :5]).min(axis=-1).all()  # positions 0..4 of slot 1 written
    assert not keys[1, :, 5:].any()  # nothing past the sequence
    assert not keys[0].any()  # the untouched slot stays untouched
    assert keys[2, :, 0].any() and not keys[2, :, 1:].any()  # slot 2: one decode step at position 0
    assert decoder.pool_bytes() == 2 * 2 * 3 * 2 * 2048 * 16 * 4


def greedy_alone(engine, ids: list[int], steps: int) -> list[np.ndarray]:
    decoder = open_decoder(engine, slots=1)
    token = int(decoder.prefill(0, ids)[-1].argmax())
    out = []
    for _ in range(steps):
        logits = decoder.decode([0], [token])[0]
        out.append(logits)
        token = int(logits.argmax())
    return out


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]])
def test_batched_decode_equals_each_sequence_alone(tiny_engine, order):
    prompts = ["Short one.", "A somewhat longer prompt than the first one, to offset lengths.", "Médium 中文 🌊"]
    ids = [tiny_engine.tokenizer.encode(p).ids for p in prompts]
    alone = [greedy_alone(tiny_engine, i, 6) for i in ids]
    decoder = open_decoder(tiny_engine, slots=3)
    tokens = [int(decoder.prefill(slot, ids[slot])[-1].argmax()) for slot in range(3)]
    for step in range(6):
        logits = decoder.decode(order, [tokens[s] for s in order])
        for row, slot in enumerate(order):
            np.testing.assert_allclose(logits[row], alone[slot][step], atol=1e-4)
            tokens[slot] = int(logits[row].argmax())


def test_context_overflow_names_both_numbers(tiny_llama_dir, tmp_path):
    small = export_model(str(tiny_llama_dir), tmp_path / "small", ExportOptions(max_context=1024, parity_tokens=4))
    decoder = open_decoder(load_engine(small.directory), slots=1)
    decoder.prefill(0, [5] * 1000)
    with pytest.raises(ContextLengthError, match=r"1030 positions needed .* holds 1024"):
        decoder.prefill(0, [5] * 30)
    decoder.reset(0)
    assert decoder.prefill(0, [5] * 30).shape == (1, small.manifest.vocab_size)


def test_qwen2_with_biases_and_untied_head(tmp_path):
    from tests.tiny_models import make_tiny_llama

    folder = make_tiny_llama(tmp_path / "qwen", model_type="qwen2", tie=False)
    result = export_model(str(folder), tmp_path / "engine", ExportOptions())
    assert result.manifest.style == "gqa-shared-kv" and result.parity["greedy_identical"]
    initializers = {i.name for i in load_graph(result.directory).initializer}
    assert "lm_head.weight_t" in initializers and any(name.endswith("qkv_proj.bias") for name in initializers)


def test_qwen3_query_and_key_norms_on_the_shared_kv_graph(tmp_path):
    """Qwen3 normalizes each head's query and key before the rotary embedding: PyTorch's greedy
    tokens, on the batched graph, with rows in a batch equal to each sequence alone."""
    from tests.tiny_models import make_tiny_llama

    folder = make_tiny_llama(tmp_path / "qwen3", model_type="qwen3", tie=False)
    result = export_model(str(folder), tmp_path / "engine", ExportOptions())
    assert result.manifest.style == "gqa-shared-kv" and result.parity["greedy_identical"]
    graph = load_graph(result.directory)
    assert {"model.layers.1.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"} <= {i.name for i in graph.initializer}
    engine = load_engine(result.directory)
    ids = [engine.tokenizer.encode(p).ids for p in ("Short one.", "A longer prompt than the first one, to offset the lengths.")]
    alone = [greedy_alone(engine, i, 6) for i in ids]
    decoder = open_decoder(engine, slots=2)
    tokens = [int(decoder.prefill(slot, ids[slot])[-1].argmax()) for slot in range(2)]
    for step in range(6):
        logits = decoder.decode([0, 1], tokens)
        for slot in range(2):
            np.testing.assert_allclose(logits[slot], alone[slot][step], atol=1e-4)
            tokens[slot] = int(logits[slot].argmax())


def assert_matches_whole_model(folder: Path, engine_dir: Path, text: str, new_tokens: int = 16) -> None:
    """Greedy tokens and the prompt's last logits: the engine's equal the whole PyTorch model's
    (not only the layer-streamed reference's, which the export's own parity check uses), which
    decodes over its cache as generate() does."""
    from transformers import AutoModelForCausalLM

    from export.parity import engine_greedy, torch_greedy

    engine = load_engine(engine_dir)
    ids = engine.tokenizer.encode(text).ids
    # eager attention: transformers' SDPA path leaves out Gemma 2's attention soft-capping
    expected, prompt_logits, _ = torch_greedy(AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval(), ids, new_tokens)
    tokens, engine_prompt_logits, _ = engine_greedy(open_decoder(engine, slots=1), ids, new_tokens)
    assert tokens == expected
    np.testing.assert_allclose(engine_prompt_logits[-1], prompt_logits[-1], atol=1e-3)


def test_max_context_beyond_the_model_is_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(ExportError, match="exceeds the 4096 positions"):
        export_model(str(tiny_llama_dir), tmp_path / "out" / "e", ExportOptions(max_context=8192))
    assert list((tmp_path / "out").iterdir()) == []


# -- optimum fallback -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_engine(tiny_gpt2_engine):
    return tiny_gpt2_engine


def test_uncovered_architecture_falls_back_to_optimum(gpt2_engine):
    manifest = gpt2_engine.manifest
    assert manifest.style == "concat-kv" and not manifest.kv_cache.shared_buffer
    assert manifest.export_options["builder_used"] == "optimum"
    assert gpt2_engine.parity["greedy_identical"] and gpt2_engine.parity["tokenizer_identical"]


def test_the_fallback_says_why_in_the_export_its_record_and_the_server_log(tiny_gpt2_dir, tmp_path, caplog):
    """A model on optimum's graph says so, with the builder's reason: in the export's output, in
    parity.json and manifest.json, and in the server's log when it loads (one sequence at a time)."""
    import io
    import logging

    from api.models.loader import RuntimeLoader
    from export.progress import Progress
    from runtime.settings import RuntimeSettings

    output = io.StringIO()
    result = export_model(str(tiny_gpt2_dir), tmp_path / "gpt2", ExportOptions(max_context=256, parity_tokens=4), progress=Progress(output, live=False))
    reason = "our GroupQueryAttention builder cannot build GPT2LMHeadModel: model_type 'gpt2' is not one of"
    assert reason in output.getvalue() and "serves ONE sequence at a time" in output.getvalue()
    assert result.parity["graph"]["fallback_reason"].startswith(reason) and result.parity["graph"]["batched_decode"] is False
    assert result.manifest.export_options["fallback_reason"].startswith(reason)
    with caplog.at_level(logging.WARNING, logger="appliance.api"):
        RuntimeLoader(RuntimeSettings(), warm=False).load(result.directory).generator.close()
    assert any("serves one sequence at a time" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_concat_decoder_chunks_and_slots(gpt2_engine):
    engine = load_engine(gpt2_engine.directory)
    decoder = open_decoder(engine, slots=2)
    assert isinstance(decoder, ConcatKVDecoder)
    ids = engine.tokenizer.encode("Fallback graphs keep their cache inside ONNX Runtime.").ids
    whole = decoder.prefill(0, ids, logits_to_keep=len(ids))
    parts = [decoder.prefill(1, ids[:4], 4), decoder.prefill(1, ids[4:], len(ids) - 4)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-4)
    both = decoder.decode([0, 1], [3, 3])
    np.testing.assert_allclose(both[0], both[1], atol=1e-4)


def test_forcing_gqa_on_gpt2_fails_cleanly(tiny_gpt2_dir, tmp_path):
    with pytest.raises(UnsupportedModelError, match="--builder gqa cannot build"):
        export_model(str(tiny_gpt2_dir), tmp_path / "out" / "e", ExportOptions(builder="gqa"))
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_forced_export_keeps_the_old_engine(tiny_llama_engine, tiny_gpt2_dir, tmp_path):
    target = tmp_path / "engine"
    shutil.copytree(tiny_llama_engine.directory, target)
    before = (target / "manifest.json").read_text()
    with pytest.raises(UnsupportedModelError):
        export_model(str(tiny_gpt2_dir), target, ExportOptions(builder="gqa", force=True))
    assert (target / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]


def test_a_killed_exports_leftovers_are_cleaned(tiny_llama_dir, tmp_path):
    dead = tmp_path / ".engine.partial-999999999"  # no such process
    dead.mkdir()
    (dead / "model.onnx.data").write_bytes(b"half")
    export_model(str(tiny_llama_dir), tmp_path / "engine", ExportOptions(parity_tokens=4))
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]


def test_force_replaces_an_engine(tiny_llama_dir, tmp_path):
    target = tmp_path / "engine"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    export_model(str(tiny_llama_dir), target, ExportOptions(force=True, parity_tokens=4))
    assert not (target / "stale.txt").exists()
    verify_files(target, read_manifest(target))
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]


# -- embedding encoders -----------------------------------------------------------------


def test_encoder_export_records_pooling_and_matches_pytorch(tiny_encoder_dir, tmp_path):
    result = export_model(str(tiny_encoder_dir), tmp_path / "enc", ExportOptions())
    spec = result.manifest.embedding
    assert (spec.pooling, spec.normalize, spec.dimension, spec.max_input_tokens) == ("mean", True, 32, 64)
    assert result.manifest.style == "encoder"
    assert result.parity["passed"] and result.parity["min_cosine"] >= 0.9999
    assert result.parity["reference"] == "sentence-transformers"

    embedder = Embedder(load_engine(result.directory))
    long_text = "word " * 200
    out = embedder.encode(["hello world", long_text])
    assert out.token_counts[1] == 64
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ContextLengthError, match="at most 64"):
        embedder.encode([long_text], truncate=False)


def test_an_int8_encoder_is_quantized_and_held_to_the_quantized_bar(tiny_encoder_dir, tmp_path):
    import onnx

    result = export_model(str(tiny_encoder_dir), tmp_path / "enc8", ExportOptions(precision="int8"))
    ops = [node.op_type for node in onnx.load(str(result.directory / result.manifest.graph_file)).graph.node]
    assert "MatMulNBits" in ops  # the weights really are int8 blocks, not an fp32 graph named int8
    assert result.manifest.precision == result.parity["precision"] == "int8"
    assert result.parity["passed"] and result.parity["cosine_bar"] == 0.999 and result.parity["min_cosine"] >= 0.999


def test_a_short_context_export_still_validates_every_prompt(tiny_llama_dir, tmp_path):
    short = export_model(str(tiny_llama_dir), tmp_path / "short", ExportOptions(max_context=96))
    records = short.parity["prompts"]
    assert short.parity["greedy_identical"] and len(records) == 5
    assert short.parity["greedy_tokens_per_prompt"] == 48  # half the context
    long_prompt = next(r for r in records if r["name"] == "long-report")
    assert long_prompt["prompt_cut_to_fit_context"] and long_prompt["prompt_tokens"] == 48
    assert long_prompt["tokenizer_identical"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_exports_record_agreement_with_the_fp32_reference(tiny_llama_dir, tmp_path, precision):
    # The tiny model's weights are random floats, not GGUF blocks: int4 quantizes them with HQQ.
    result = export_model(str(tiny_llama_dir), tmp_path / precision, ExportOptions(precision=precision, max_context=256, parity_tokens=4))
    parity = json.loads((result.directory / "parity.json").read_text())
    versus = parity["versus_fp32"]
    assert versus["positions"] >= 2000 and 0 < versus["top1_agreement"] <= 1 and versus["mean_kl"] >= 0
    assert parity["precision"] == precision and result.manifest.precision == precision
    assert parity["weight_quantization"]["bits"] == int(precision[3:])
    if precision == "int4":
        assert parity["source_blocks"]["carried_exactly"] == [] and parity["source_blocks"]["rounded"]
        assert parity["source_blocks"]["rounded_with"] == "int4 with hqq, int8 (the head) to nearest"
        assert parity["weight_quantization"]["method"] == "source-blocks"
    graph = (result.directory / "model.onnx").read_bytes()
    assert b"MatMulNBits" in graph
    assert versus["kind"] == "quantized-vs-fp32-reference" and "a layer at a time" in versus["reference"]
    assert [p.name for p in tmp_path.iterdir()] == [precision]  # the engine's scratch logits are cleaned up
