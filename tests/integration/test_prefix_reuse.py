"""Prefix reuse never changes output: tokens with the cache equal tokens without it.

The real default engine runs a five-turn chat twice, once with prefix reuse and once
evaluating every prompt in full: every turn's tokens are the same, and from the second turn
on the earlier prompt is found in the cache (the answers' positions came from decode steps
and are evaluated again: see runtime/scheduler.py); a prompt sent twice gives the same
tokens twice. The tiny engine covers the slot mechanics: caches
that move when slots are packed (swapped out of a hole into the highest slot), a free slot
picked by its prefix, the least recently used cache overwritten first, a failed request's
cache dropped.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.engine import load_engine
from runtime.events import Delta, Finish
from runtime.generation import TextGenerator
from runtime.request import GenerationRequest
from runtime.sampling import SamplingParams

from .test_scheduler import run_together, tokens_of

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0)

QUESTIONS = [
    "Name three rivers in Europe.",
    "Which of them is the longest?",
    "How many countries does it flow through?",
    "Name two cities on its banks.",
    "Summarise our conversation in one sentence.",
]


def chat(generator: TextGenerator, turns: list[str], max_tokens: int = 40) -> list[tuple[list[int], Finish]]:
    """A conversation, each answer fed back as the assistant's message; (tokens, finish) per turn."""
    messages: list[dict[str, str]] = []
    results = []
    for question in turns:
        messages.append({"role": "user", "content": question})
        prompt = tuple(generator.chat_prompt_ids(messages))
        tokens, finish = tokens_of(generator, GenerationRequest(prompt, GREEDY, max_tokens=max_tokens))
        messages.append({"role": "assistant", "content": generator.tokenizer.decode(tokens, skip_special_tokens=True)})
        results.append((tokens, finish))
    return results


@pytest.fixture(scope="module")
def real_engine(default_engines):
    return load_engine(default_engines["decoder"])


def test_a_chat_reuses_its_history_and_gives_the_same_tokens(real_engine):
    reusing = TextGenerator(real_engine, prefill_chunk=64, slots=2)
    fresh = TextGenerator(real_engine, prefill_chunk=64, slots=2, prefix_cache_tokens=0)
    try:
        with_cache = chat(reusing, QUESTIONS)
        without = chat(fresh, QUESTIONS)
        again = chat(reusing, QUESTIONS[:1])[0]
    finally:
        reusing.close()
        fresh.close()
    assert [tokens for tokens, _ in with_cache] == [tokens for tokens, _ in without]
    assert again[0] == with_cache[0][0] and again[1].usage.cached_tokens == again[1].usage.prompt_tokens - 2
    assert all(finish.usage.cached_tokens == 0 for _, finish in without)
    previous_prompt = 0
    for turn, (_, finish) in enumerate(with_cache):
        usage = finish.usage
        assert usage.cached_tokens <= usage.prompt_tokens - 2  # the last two prompt tokens are always evaluated
        if turn:  # the earlier turn's prompt was in the cache
            assert usage.cached_tokens == previous_prompt, (turn, usage)
        previous_prompt = usage.prompt_tokens
    assert reusing.stats().prefix_hits >= len(QUESTIONS) - 1


@pytest.fixture
def tiny_pair(tiny_llama_engine):
    engine = load_engine(tiny_llama_engine.directory)
    reusing = TextGenerator(engine, prefill_chunk=8, slots=4)
    fresh = TextGenerator(engine, prefill_chunk=8, slots=4, prefix_cache_tokens=0)
    yield reusing, fresh
    reusing.close()
    fresh.close()


def _request(generator: TextGenerator, text: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(tuple(generator.chat_prompt_ids([{"role": "user", "content": text}])), GREEDY, max_tokens=max_tokens, ignore_eos=True)


def test_caches_moved_by_packing_are_reused_intact(tiny_pair):
    reusing, fresh = tiny_pair
    texts = ["alpha beta gamma delta", "one two three four five six", "red green blue", "north south east west up down"]
    # Different lengths: the sequences leave out of order, so caches are swapped between slots.
    first = [_request(reusing, t, n) for t, n in zip(texts, [5, 30, 12, 20], strict=True)]
    expected = [tokens_of(fresh, r)[0] for r in first]
    assert run_together(reusing, first) == expected
    # Each prompt again with its answer and a follow-up: the longest cached prefix is in
    # whichever slot packing left it.
    follow = []
    for request, tokens in zip(first, expected, strict=True):
        prompt = request.prompt_ids + tuple(tokens) + tuple(reusing.tokenize(" and then?", add_special_tokens=False))
        follow.append(GenerationRequest(prompt, GREEDY, max_tokens=10, ignore_eos=True))
    before = reusing.stats()
    results = [tokens_of(reusing, r) for r in reversed(follow)]
    assert [tokens for tokens, _ in results] == [tokens_of(fresh, r)[0] for r in reversed(follow)]
    for (_, finish), request in zip(results, reversed(first), strict=True):
        # The earlier prompt was cached; its answer's positions came from decode steps and are not reused.
        assert finish.usage.cached_tokens == len(request.prompt_ids)
    assert reusing.stats().prefix_hits - before.prefix_hits == 4


def test_the_least_recently_used_cache_is_overwritten_first(tiny_pair):
    reusing, _ = tiny_pair
    scheduler = reusing.scheduler
    decoder = reusing.decoder
    prompts = [_request(reusing, f"topic number {i} " * (i + 2), 3) for i in range(5)]
    for request in prompts[:4]:  # one after another: four caches in the four slots
        tokens_of(reusing, request)
    held = [tuple(decoder.cached_ids[s, : decoder.length(s)]) for s in range(decoder.slots)]
    assert all(any(h[: len(r.prompt_ids)] == r.prompt_ids for h in held) for r in prompts[:4])
    tokens_of(reusing, prompts[4])  # a fifth, unrelated prompt evicts the oldest (the first)
    held = [tuple(decoder.cached_ids[s, : decoder.length(s)]) for s in range(decoder.slots)]
    assert not any(h[: len(prompts[0].prompt_ids)] == prompts[0].prompt_ids for h in held)
    assert all(any(h[: len(r.prompt_ids)] == r.prompt_ids for h in held) for r in prompts[1:])
    assert scheduler.stats().active == 0


def test_a_shared_start_is_reused_and_a_changed_token_is_not(tiny_pair):
    reusing, fresh = tiny_pair
    base = _request(reusing, "the same long system prompt for everyone " * 3, 4)
    tokens_of(reusing, base)
    changed = list(base.prompt_ids)
    changed[5] = (changed[5] + 1) % reusing.decoder.vocab_size
    other = GenerationRequest(tuple(changed), GREEDY, max_tokens=6, ignore_eos=True)
    tokens, finish = tokens_of(reusing, other)
    assert finish.usage.cached_tokens == 5  # up to the changed token, no further
    assert tokens == tokens_of(fresh, other)[0]
    # The very same prompt again: all but its last two tokens come from the cache.
    tokens, finish = tokens_of(reusing, base)
    assert finish.usage.cached_tokens == len(base.prompt_ids) - 2
    assert tokens == tokens_of(fresh, base)[0]


def test_a_failed_request_leaves_no_cache_behind(tiny_pair, monkeypatch):
    reusing, _ = tiny_pair
    request = _request(reusing, "a prompt whose decode step fails", 8)
    real_decode = reusing.decoder.decode
    calls = {"n": 0}

    def failing(slots, tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("poisoned step")
        return real_decode(slots, tokens)

    monkeypatch.setattr(reusing.decoder, "decode", failing)
    events = []
    with pytest.raises(Exception, match="failed this request"):
        events.extend(reusing.generate(request))
    assert any(isinstance(e, Delta) for e in events)
    assert all(reusing.decoder.length(s) == 0 or reusing.decoder.common_prefix(s, request.prompt_ids) == 0 for s in range(reusing.decoder.slots))


def test_decoder_swap_exchanges_caches_and_their_tokens(tiny_llama_engine):
    from runtime.decoder import open_decoder

    decoder = open_decoder(load_engine(tiny_llama_engine.directory), slots=3)
    decoder.prefill(0, [1, 2, 3, 4, 5])
    decoder.prefill(2, [9, 8])
    decoder.decode([2], [7])  # a decoded position: cached, but not offered for reuse
    assert decoder.length(2) == 3 and decoder.common_prefix(2, [9, 8, 7]) == 2
    keys = decoder.cache_view(0, "key")
    slot0, slot2 = keys[0, :, :5].copy(), keys[2, :, :3].copy()
    decoder.swap(0, 2)
    assert (decoder.length(0), decoder.length(2)) == (3, 5)
    assert np.array_equal(keys[0, :, :3], slot2) and np.array_equal(keys[2, :, :5], slot0)
    assert decoder.common_prefix(2, [1, 2, 3, 7]) == 3 and decoder.common_prefix(0, [9, 8, 7]) == 2
    decoder.truncate(2, 2)
    assert decoder.length(2) == 2 and decoder.common_prefix(2, [1, 2, 3]) == 2


@pytest.mark.parametrize(
    ("left", "budget", "size"),
    [(10, 512, 10), (1, 512, 1), (513, 512, 511), (3, 2, 0), (2, 1, 0), (5, 1, 0), (6, 4, 4), (5, 4, 3), (2, 2, 2)],
)
def test_no_prompt_is_evaluated_one_token_at_a_time(left, budget, size):
    from runtime.scheduler import Scheduler

    assert Scheduler._chunk_size(left, budget) == size


def test_the_server_default_is_the_runtime_default():
    import inspect

    from api.models.loader import load_models
    from api.settings import ServerSettings
    from runtime.scheduler import DEFAULT_PREFIX_CACHE_TOKENS

    assert ServerSettings().prefix_cache_tokens == DEFAULT_PREFIX_CACHE_TOKENS
    assert inspect.signature(load_models).parameters["prefix_cache_tokens"].default == DEFAULT_PREFIX_CACHE_TOKENS


def test_a_slot_that_holds_less_gives_its_pages_back(tiny_llama_engine):
    from runtime.decoder import open_decoder

    decoder = open_decoder(load_engine(tiny_llama_engine.directory), slots=2)
    long_prompt = [5 + i % 500 for i in range(1500)]
    decoder.prefill(0, long_prompt)
    keys = decoder.cache_view(0, "key")
    assert np.abs(keys[0, :, 200:1400]).max() > 0
    decoder.truncate(0, 100)  # a shorter sequence takes the slot over
    # The released pages read as zeros again: they were given back, not kept resident.
    # (whole 4 KiB pages only: the tiny model's 64-byte positions make position 128 the first past 100).
    assert np.abs(keys[0, :, 128:1500]).max() == 0 and np.abs(keys[0, :, :100]).max() > 0
    decoder.reset(0)
    assert np.abs(keys[0, :, :64]).max() == 0


def test_free_slots_keep_at_most_the_budget(tiny_llama_engine):
    engine = load_engine(tiny_llama_engine.directory)
    probe = TextGenerator(engine, slots=1)
    size = len(_request(probe, "conversation 0: " + "words to remember " * 30, 4).prompt_ids) + 4  # a prompt and its answer
    probe.close()
    budget = 2 * size + 3  # room for two of the four conversations
    generator = TextGenerator(engine, prefill_chunk=512, slots=4, prefix_cache_tokens=budget)
    try:
        for i in range(4):
            tokens_of(generator, _request(generator, f"conversation {i}: " + "words to remember " * 30, 4))
        lengths = sorted(generator.decoder.length(s) for s in range(4))
        assert lengths[:2] == [0, 0] and sum(lengths) <= budget, (lengths, budget)
        # The latest conversation is the one kept.
        last = _request(generator, "conversation 3: " + "words to remember " * 30, 4)
        assert tokens_of(generator, last)[1].usage.cached_tokens == len(last.prompt_ids) - 2
    finally:
        generator.close()


def test_reusing_decoded_positions_is_asked_for(tiny_llama_engine):
    engine = load_engine(tiny_llama_engine.directory)
    generator = TextGenerator(engine, slots=2, reuse_decoded=True)
    try:
        first = _request(generator, "tell me more", 12)
        answer, _ = tokens_of(generator, first)
        follow = GenerationRequest(first.prompt_ids + tuple(answer) + (5, 6, 7), GREEDY, max_tokens=3, ignore_eos=True)
        # The prompt and every fed-back answer token (all but the last, never fed) are reused.
        assert tokens_of(generator, follow)[1].usage.cached_tokens == len(first.prompt_ids) + len(answer) - 1
    finally:
        generator.close()
