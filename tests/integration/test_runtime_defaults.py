"""The runtime on the real default engines, against the PyTorch reference models."""

from __future__ import annotations

import numpy as np
import pytest

from export.parity import render_prompt, torch_greedy
from export.prompts import DECODER_PROMPTS, EMBEDDING_SENTENCES
from runtime.embeddings import Embedder
from runtime.engine import load_engine
from runtime.events import Delta, Finish
from runtime.generation import TextGenerator
from runtime.request import GenerationRequest
from runtime.sampling import SamplingParams
from runtime.text import IncrementalDetokenizer

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0)
RICH_TEXT = "Crème brûlée à la française, naïve café. 你好，世界！日本語のテキスト。🎉🚀✨👩‍👩‍👧🇫🇷 Ελληνικά, Привет."


@pytest.fixture(scope="module")
def generator(default_engines) -> TextGenerator:
    return TextGenerator(load_engine(default_engines["decoder"]))


@pytest.fixture(scope="module")
def reference(default_engines):
    """SmolLM2 in PyTorch, loaded from the very GGUF the engine came from."""
    from export.loading import load_decoder
    from export.sources import resolve_source

    loaded = load_decoder(resolve_source("smollm2-135m-instruct"))
    return loaded.model, loaded.tokenizer


def run(generator: TextGenerator, request: GenerationRequest) -> tuple[list[Delta], Finish]:
    events = list(generator.generate(request))
    return events[:-1], events[-1]


@pytest.mark.parametrize("prompt", DECODER_PROMPTS, ids=lambda p: p.name)
def test_greedy_64_tokens_equal_pytorch(generator, reference, prompt):
    model, hf_tokenizer = reference
    if prompt.chat:
        # The runtime renders the chat template itself (jinja2) and must get transformers' ids.
        ids = generator.chat_prompt_ids([{"role": "user", "content": prompt.text}])
    else:
        ids = generator.tokenize(prompt.text)
    assert ids == render_prompt(hf_tokenizer, prompt)
    deltas, _ = run(generator, GenerationRequest(tuple(ids), GREEDY, max_tokens=64, ignore_eos=True))
    expected, _, _ = torch_greedy(model, ids, 64)
    assert [t for d in deltas for t in d.token_ids] == expected


def test_detokenizer_on_emoji_cjk_and_accents(generator):
    ids = generator.tokenize(RICH_TEXT, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(generator.tokenizer)
    parts = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert "".join(parts) == generator.detokenize(ids) == RICH_TEXT
    assert not any("\ufffd" in p for p in parts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streamed_deltas_join_to_the_one_shot_decode(generator, seed):
    messages = [{"role": "user", "content": "Réponds avec des emoji et du chinois : 你好吗？🎉 Écris une phrase accentuée."}]
    ids = tuple(generator.chat_prompt_ids(messages))
    request = GenerationRequest(ids, SamplingParams(temperature=1.0, seed=seed), max_tokens=64)
    deltas, _ = run(generator, request)
    tokens = [t for d in deltas for t in d.token_ids]
    assert "".join(d.text for d in deltas) == generator.detokenize(tokens)


def test_stops_spanning_two_and_three_tokens_never_leak(generator):
    ids = tuple(generator.chat_prompt_ids([{"role": "user", "content": "List three fruits and describe each one."}]))
    deltas, _ = run(generator, GenerationRequest(ids, GREEDY, max_tokens=60, ignore_eos=True))
    pieces = [d.text for d in deltas]
    full = "".join(pieces)
    for first, last in ((20, 21), (30, 32)):  # a stop over 2 tokens, then over 3
        start = len("".join(pieces[:first])) + len(pieces[first]) // 2
        end = len("".join(pieces[:last])) + max(1, len(pieces[last]) // 2)
        stop = full[start:end]
        expected = full[: full.index(stop)]
        streamed = ""
        stopped_deltas, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=60, ignore_eos=True, stop=(stop,)))
        for delta in stopped_deltas:
            streamed += delta.text
            assert expected.startswith(streamed)  # nothing past the cut, at any moment
        assert streamed == expected and finish.reason == "stop" and finish.stop_sequence == stop


def test_same_seed_same_text_different_seeds_differ(generator):
    ids = tuple(generator.chat_prompt_ids([{"role": "user", "content": "Write a short poem about rain."}]))

    def text(seed: int) -> str:
        deltas, _ = run(generator, GenerationRequest(ids, SamplingParams(temperature=1.0, seed=seed), max_tokens=40, ignore_eos=True))
        return "".join(d.text for d in deltas)

    assert text(42) == text(42)
    assert len({text(42), text(43), text(44)}) == 3


def test_embeddings_match_sentence_transformers(default_engines):
    from sentence_transformers import SentenceTransformer

    from export.sources import resolve_source

    embedder = Embedder(load_engine(default_engines["encoder"]))
    sentences = list(EMBEDDING_SENTENCES)
    ours = embedder.encode(sentences)
    folder = resolve_source("all-minilm-l6-v2").path  # the pulled model the engine was exported from
    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    reference = np.asarray(st.encode(sentences, convert_to_numpy=True), dtype=np.float32)
    cosines = (ours.vectors * reference).sum(axis=1) / (np.linalg.norm(ours.vectors, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosines.min() >= 0.9999
    assert len(ours.token_counts) == len(sentences) and all(n >= 2 for n in ours.token_counts)


def test_concurrent_embeddings_share_encoder_runs_and_equal_one_by_one(default_engines):
    """Sixteen callers with a sentence each, arriving while a run is under way: one shared run,
    each vector what encoding its sentence alone gives (padding beside longer rows included)."""
    import threading

    embedder = Embedder(load_engine(default_engines["encoder"]))
    sentences = [f"{s} ({i})" if i % 3 else s for i, s in enumerate((list(EMBEDDING_SENTENCES) * 4)[:17])]
    alone = [embedder.encode([s]).vectors[0] for s in sentences]
    before = embedder.batch_stats.runs
    run = embedder.batcher.run
    started = threading.Event()

    def held_run(rows):  # the first run waits until the sixteen later calls are queued behind it
        if not started.is_set():
            started.set()
            for _ in range(1000):
                if len(embedder.batcher._queue) >= 16:
                    break
                threading.Event().wait(0.005)
        return run(rows)

    embedder.batcher.run = held_run
    results: dict[int, np.ndarray] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, embedder.encode([sentences[0]]).vectors[0]))
    first.start()
    started.wait(10)
    others = [threading.Thread(target=lambda i=i: results.__setitem__(i, embedder.encode([sentences[i]]).vectors[0])) for i in range(1, 17)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(60)
    assert embedder.batch_stats.runs - before == 2 and embedder.batch_stats.largest_run == 16
    for i, vector in results.items():
        np.testing.assert_allclose(vector, alone[i], atol=1e-5, rtol=0)
