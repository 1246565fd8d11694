"""Continuous batching: outputs do not depend on the company a request keeps.

The acceptance test runs on the real default engine: each of 8 greedy requests gives the
same tokens alone as beside 7 others (different prompt lengths, so the batch mixes cache
lengths, joins and leaves). The tiny engine covers the mechanics quickly: packing slots
after a sequence leaves, cancellation, the queue limit, sampled requests with seeds.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime.engine import load_engine
from runtime.errors import QueueFullError
from runtime.events import Delta, Finish
from runtime.generation import TextGenerator
from runtime.request import GenerationRequest
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0)

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue, as if to a child who keeps asking why.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish, German and Italian.",
    "def fibonacci(n):",
    "Tell me a short story about a robot who learns to paint, with a happy ending and a twist.",
    "Hi",
]


def tokens_of(generator: TextGenerator, request: GenerationRequest) -> tuple[list[int], Finish]:
    events = list(generator.generate(request))
    assert isinstance(events[-1], Finish)
    return [t for e in events[:-1] if isinstance(e, Delta) for t in e.token_ids], events[-1]


def run_together(generator: TextGenerator, requests: list[GenerationRequest], stagger_s: float = 0.0) -> list[list[int]]:
    """Run every request on its own thread at (almost) the same time."""
    results: list[list[int] | BaseException | None] = [None] * len(requests)

    def worker(i: int) -> None:
        try:
            time.sleep(stagger_s * i)
            results[i] = tokens_of(generator, requests[i])[0]
        except BaseException as exc:  # surfaced below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def requests_for(generator: TextGenerator, max_tokens: list[int], sampling: SamplingParams = GREEDY) -> list[GenerationRequest]:
    return [
        GenerationRequest(tuple(generator.chat_prompt_ids([{"role": "user", "content": p}])), sampling, max_tokens=n, ignore_eos=True)
        for p, n in zip(PROMPTS[: len(max_tokens)], max_tokens, strict=True)
    ]


# -- the real engine: the acceptance test ------------------------------------------------


@pytest.fixture(scope="module")
def real_generator(default_engines):
    generator = TextGenerator(load_engine(default_engines["decoder"]), prefill_chunk=32, slots=8)
    yield generator
    generator.close()


def test_greedy_tokens_alone_equal_tokens_beside_seven_others(real_generator):
    # Different lengths: requests leave the batch at different steps, and slots get packed.
    requests = requests_for(real_generator, [40, 24, 48, 16, 32, 40, 48, 8])
    alone = [tokens_of(real_generator, r)[0] for r in requests]
    steps = real_generator.stats().steps
    together = run_together(real_generator, requests)
    assert together == alone
    # They really shared steps: far fewer steps than tokens.
    assert real_generator.stats().steps - steps < sum(len(t) for t in alone) / 2
    # Staggered arrivals: requests join while others are mid-decode (prefill between steps).
    assert run_together(real_generator, requests, stagger_s=0.02) == alone
    assert real_generator.stats().active == 0


def test_batch_invariant_greedy_alone_equals_beside_fifteen_others(default_engines):
    """With batch_invariant, a lone sequence's steps run as two rows: the same kernels as in
    any batch, so every token matches bit for bit (the benchmark's 16-stream check, here)."""
    generator = TextGenerator(load_engine(default_engines["decoder"]), prefill_chunk=512, slots=16, batch_invariant=True)
    try:
        prompts = PROMPTS * 2
        requests = [
            GenerationRequest(tuple(generator.chat_prompt_ids([{"role": "user", "content": p}])), GREEDY, max_tokens=48, ignore_eos=True)
            for p in prompts
        ]
        alone = [tokens_of(generator, r)[0] for r in requests[:8]]
        assert run_together(generator, requests) == alone + alone
    finally:
        generator.close()


def test_a_padded_step_leaves_the_neighbour_as_it_was(tiny_llama_engine):
    from runtime.decoder import open_decoder

    decoder = open_decoder(load_engine(tiny_llama_engine.directory), slots=2, batch_invariant=True)
    decoder.prefill(1, [3, 4, 5])
    held = decoder.cache_view(0, "key")[1, :, :3].copy()
    decoder.prefill(0, [7, 8])
    first = decoder.decode([0], [9])
    assert decoder.length(0) == 3 and decoder.length(1) == 3  # the neighbour's length did not move
    assert np.array_equal(decoder.cache_view(0, "key")[1, :, :3], held)
    plain = open_decoder(load_engine(tiny_llama_engine.directory), slots=2)
    plain.prefill(0, [7, 8])
    np.testing.assert_allclose(first, plain.decode([0], [9]), rtol=1e-4, atol=1e-4)


# -- the tiny engine: mechanics ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_llama_engine):
    generator = TextGenerator(load_engine(tiny_llama_engine.directory), prefill_chunk=8, slots=4, queue_limit=2)
    yield generator
    generator.close()


def test_seeded_sampling_is_the_same_in_a_batch(tiny):
    sampled = SamplingParams(temperature=1.2, top_p=0.9, seed=7)
    requests = requests_for(tiny, [20, 5, 30, 12, 9, 25, 3, 18], sampled)
    alone = [tokens_of(tiny, r)[0] for r in requests]
    # 6 requests on 4 slots (and a queue of 2): two wait for a slot, then join mid-stream.
    assert run_together(tiny, requests[:6]) == alone[:6]


def test_a_full_queue_is_refused_with_a_retryable_error(tiny):
    request = requests_for(tiny, [10_000])[0]
    request = GenerationRequest(request.prompt_ids, GREEDY, max_tokens=None, ignore_eos=True)
    streams = [tiny.generate(request) for _ in range(6)]  # queued at once: 4 take slots, 2 wait
    deadline = time.monotonic() + 10
    while (tiny.stats().active, tiny.stats().waiting) != (4, 2) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert (tiny.stats().active, tiny.stats().waiting) == (4, 2)
    with pytest.raises(QueueFullError) as error:
        tiny.generate(request)
    assert error.value.status == 429
    for stream in streams:
        stream.close()
    deadline = time.monotonic() + 10
    while tiny.stats().active + tiny.stats().waiting and time.monotonic() < deadline:
        time.sleep(0.005)
    assert tiny.stats().active == tiny.stats().waiting == 0


def test_a_cancelled_request_leaves_the_others_untouched(tiny):
    requests = requests_for(tiny, [30, 30, 30, 30])
    alone = [tokens_of(tiny, r)[0] for r in requests]
    streams = [tiny.generate(r) for r in requests]
    firsts = [next(s) for s in streams]  # all four hold a slot now
    streams[1].close()  # slot 1 frees; the sequence in slot 3 moves into it
    streams[0].close()
    rest = [[t for e in s if isinstance(e, Delta) for t in e.token_ids] for s in (streams[2], streams[3])]
    assert [list(firsts[2].token_ids) + rest[0], list(firsts[3].token_ids) + rest[1]] == alone[2:]


# -- faults, time limits, keep-alives (tiny engine, real ONNX Runtime errors) -----------------


def _poison(generator: TextGenerator, monkeypatch, marker: int) -> None:
    """Make the decoder feed an id outside the vocabulary wherever `marker` is fed: a real session error."""
    real = generator.decoder.decode
    bad = generator.manifest.vocab_size + 1000

    def decode(slots, tokens):
        return real(slots, [bad if int(t) == marker else t for t in tokens])

    monkeypatch.setattr(generator.decoder, "decode", decode)


def test_a_session_error_ends_only_its_request(tiny_llama_engine, monkeypatch):
    from runtime.errors import InferenceError

    generator = TextGenerator(load_engine(tiny_llama_engine.directory), prefill_chunk=64, slots=4)
    try:
        healthy = requests_for(generator, [25, 25, 25])
        alone = [tokens_of(generator, r)[0] for r in healthy]
        marker = 5
        # This request's first token is forced to `marker`; the batched step that feeds it fails.
        doomed = GenerationRequest(healthy[0].prompt_ids, SamplingParams(temperature=0, logit_bias={marker: 100.0}), max_tokens=25, ignore_eos=True)
        assert all(marker not in tokens for tokens in alone)
        _poison(generator, monkeypatch, marker)
        streams = [generator.generate(r) for r in [healthy[0], doomed, healthy[1], healthy[2]]]
        outcomes = []
        for stream in streams:
            try:
                outcomes.append([t for e in stream if isinstance(e, Delta) for t in e.token_ids])
            except InferenceError as exc:
                outcomes.append(exc)
        assert isinstance(outcomes[1], InferenceError) and "failed" in str(outcomes[1])
        assert [outcomes[0], outcomes[2], outcomes[3]] == alone
        # A prompt the session cannot evaluate ends alone too, and the engine goes on.
        from runtime.job import Job
        from runtime.request import FittedPrompt
        from runtime.sequence import SequenceState

        bad_prompt = (1, 2, generator.manifest.vocab_size + 5)
        job = Job(SequenceState(healthy[0], FittedPrompt(bad_prompt, 5, 0), generator.eos_ids, generator), time.perf_counter_ns())
        generator.scheduler.submit(job)
        with pytest.raises(InferenceError):
            list(job.events_until_finish())
        assert tokens_of(generator, healthy[2])[0] == alone[2]
        assert generator.stats().active == 0
    finally:
        generator.close()


def test_time_limit_ends_running_and_waiting_requests(tiny_llama_engine):
    from runtime.errors import QueueTimeoutError, RequestTimeoutError
    from runtime.job import Job
    from runtime.sequence import SequenceState

    generator = TextGenerator(load_engine(tiny_llama_engine.directory), slots=1, request_timeout_s=0.05)  # the endless request needs ~10× longer
    try:
        endless = GenerationRequest(requests_for(generator, [1])[0].prompt_ids, GREEDY, max_tokens=None, ignore_eos=True)
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError, match="time limit of 0.05 s"):
            list(generator.generate(endless))
        # A holder without a time limit takes the only slot; a request behind it times out waiting.
        holder = Job(SequenceState(endless, generator.prepare(endless), generator.eos_ids, generator), time.perf_counter_ns())
        generator.scheduler.submit(holder)
        with pytest.raises(QueueTimeoutError) as error:
            list(generator.generate(endless))
        assert error.value.status == 503 and error.value.headers["Retry-After"]
        generator.scheduler.cancel(holder)
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while generator.stats().active + generator.stats().waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert generator.stats().active == generator.stats().waiting == 0
    finally:
        generator.close()


def test_the_server_limit_on_tokens(tiny_llama_engine):
    from runtime.errors import RequestError

    generator = TextGenerator(load_engine(tiny_llama_engine.directory), slots=1, max_tokens_limit=12)
    try:
        prompt = requests_for(generator, [1])[0].prompt_ids
        with pytest.raises(RequestError, match="at most 12") as error:
            generator.generate(GenerationRequest(prompt, GREEDY, max_tokens=13))
        assert error.value.param == "max_tokens"
        # A request that names no limit stops at the server's.
        assert tokens_of(generator, GenerationRequest(prompt, GREEDY, max_tokens=None, ignore_eos=True))[1].usage.completion_tokens == 12
    finally:
        generator.close()


def test_a_waiting_stream_hears_keep_alives(tiny_llama_engine):
    from runtime.events import KeepAlive

    generator = TextGenerator(load_engine(tiny_llama_engine.directory), slots=1)
    try:
        endless = GenerationRequest(requests_for(generator, [1])[0].prompt_ids, GREEDY, max_tokens=None, ignore_eos=True)
        holder = generator.generate(endless)
        next(holder)  # the only slot is taken
        queued = generator.generate(endless, heartbeat_s=0.01)
        assert isinstance(next(queued), KeepAlive) and isinstance(next(queued), KeepAlive)
        assert generator.stats().waiting == 1
        holder.close()  # the slot frees; the waiting request starts
        assert isinstance(next(e for e in queued if not isinstance(e, KeepAlive)), Delta)
        queued.close()
    finally:
        generator.close()
