"""Scheduling priority on the tiny engine: background requests (batch lines) run only in what
interactive ones leave: their own cap of slots, no share of a tick that evaluates an interactive
prompt, and the same tokens as when they run alone."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from runtime.engine import load_engine
from runtime.events import Delta, Finish
from runtime.generation import TextGenerator
from runtime.request import PRIORITY_BACKGROUND, GenerationRequest
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0)


@pytest.fixture
def generator(tiny_llama_engine):
    generator = TextGenerator(load_engine(tiny_llama_engine.directory), prefill_chunk=8, slots=4, background_slots=2, background_prefill_chunk=4, prefix_cache_tokens=0)
    yield generator
    generator.close()


def request(generator: TextGenerator, text: str, max_tokens: int, background: bool = False) -> GenerationRequest:
    made = GenerationRequest(tuple(generator.tokenize(text)), GREEDY, max_tokens=max_tokens, ignore_eos=True)
    return replace(made, priority=PRIORITY_BACKGROUND) if background else made


def tokens(generator: TextGenerator, made: GenerationRequest, started: threading.Event | None = None) -> list[int]:
    out: list[int] = []
    for event in generator.generate(made):
        if isinstance(event, Delta):
            out.extend(event.token_ids)
            if started is not None and out:
                started.set()
        elif isinstance(event, Finish):
            return out
    raise AssertionError("no Finish")


def in_threads(jobs: list[Any]) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    return threads, results


def test_background_requests_hold_at_most_their_slots_and_give_the_same_tokens(generator: TextGenerator) -> None:
    texts = [f"batch line number {i} says hello" for i in range(4)]
    alone = [tokens(generator, request(generator, t, 64)) for t in texts]
    threads, results = in_threads([lambda t=t: tokens(generator, request(generator, t, 64, background=True)) for t in texts])
    most = 0
    while any(thread.is_alive() for thread in threads):
        stats = generator.stats()
        most = max(most, stats.background_active)
        assert stats.background_active <= 2
        time.sleep(0.001)
    assert results == alone
    assert most == 2  # it did use its slots


def test_a_tick_that_evaluates_an_interactive_prompt_is_its_alone(generator: TextGenerator) -> None:
    scheduler = generator.scheduler
    decoder = scheduler.decoder
    calls: list[tuple[str, tuple[bool, ...]]] = []
    real_decode, real_prefill = decoder.decode, decoder.prefill

    def decode(slots, ids):  # type: ignore[no-untyped-def]
        calls.append(("decode", tuple(scheduler._slots[s].background for s in slots)))  # type: ignore[union-attr]
        return real_decode(slots, ids)

    def prefill(slot, ids, logits_to_keep=1):  # type: ignore[no-untyped-def]
        calls.append(("prefill", (scheduler._slots[slot].background,)))  # type: ignore[union-attr]
        return real_prefill(slot, ids, logits_to_keep=logits_to_keep)

    long_prompt = "an interactive question that is long enough to take several prefill chunks of eight tokens each, surely"
    interactive = request(generator, long_prompt, 6)
    alone = tokens(generator, interactive)
    decoder.decode, decoder.prefill = decode, prefill  # type: ignore[method-assign]
    try:
        started = [threading.Event(), threading.Event()]
        threads, _ = in_threads([lambda i=i: tokens(generator, request(generator, f"background {i}", 200, background=True), started[i]) for i in range(2)])
        for event in started:
            assert event.wait(30)
        mark = len(calls)
        assert tokens(generator, interactive) == alone
        for thread in threads:
            thread.join(60)
    finally:
        decoder.decode, decoder.prefill = real_decode, real_prefill  # type: ignore[method-assign]
    during = calls[mark:]
    mine = [i for i, (kind, rows) in enumerate(during) if kind == "prefill" and rows == (False,)]
    assert len(mine) >= 3, during[:20]  # the prompt took several ticks
    between = during[mine[0] : mine[-1] + 1]
    assert all(True not in rows for kind, rows in between), between
    # Background decoding went on before and after.
    assert any(kind == "decode" and True in rows for kind, rows in during[mine[-1] :])
