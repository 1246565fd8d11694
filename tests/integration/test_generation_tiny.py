"""The decode loop on tiny real engines: tokens, text, stops, limits, events, cancellation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from export.parity import torch_greedy
from export.prompts import DECODER_PROMPTS
from runtime.engine import load_engine
from runtime.errors import ContextLengthError, RequestError
from runtime.events import FINISH_LENGTH, FINISH_STOP, Delta, Finish
from runtime.generation import TextGenerator
from runtime.request import CONTEXT_TRUNCATE, GenerationRequest
from runtime.sampling import SamplingParams, log_softmax

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def generator(tiny_llama_engine) -> TextGenerator:
    return TextGenerator(load_engine(tiny_llama_engine.directory), prefill_chunk=16)


@pytest.fixture(scope="module")
def torch_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()


def run(generator: TextGenerator, request: GenerationRequest) -> tuple[list[Delta], Finish]:
    events = list(generator.generate(request))
    assert isinstance(events[-1], Finish) and all(isinstance(e, Delta) for e in events[:-1])
    return events[:-1], events[-1]


def prompt_ids(generator: TextGenerator, text: str) -> tuple[int, ...]:
    return tuple(generator.chat_prompt_ids([{"role": "user", "content": text}]))


@pytest.mark.parametrize("prompt", DECODER_PROMPTS, ids=lambda p: p.name)
def test_greedy_tokens_equal_pytorch(generator, torch_model, prompt):
    # Chunked prefill (16 tokens a chunk here) and the cached decode binding both in play.
    ids = prompt_ids(generator, prompt.text)
    deltas, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=32, ignore_eos=True))
    reference, _, _ = torch_greedy(torch_model, ids, 32)
    assert [t for d in deltas for t in d.token_ids] == reference
    assert finish.reason == FINISH_LENGTH and finish.usage.completion_tokens == 32


def test_streamed_text_equals_decoding_the_tokens(generator):
    ids = prompt_ids(generator, "Médium 中文 🌊 naïve")
    for seed in range(3):
        deltas, _ = run(generator, GenerationRequest(ids, SamplingParams(temperature=1.5, seed=seed), max_tokens=48, ignore_eos=True))
        tokens = [t for d in deltas for t in d.token_ids]
        assert "".join(d.text for d in deltas) == generator.detokenize(tokens)


def test_a_stop_spanning_tokens_ends_the_text_before_it(generator):
    ids = prompt_ids(generator, "Tell me about the sea.")
    deltas, _ = run(generator, GenerationRequest(ids, GREEDY, max_tokens=40, ignore_eos=True))
    pieces = [d.text for d in deltas]
    full = "".join(pieces)
    # A stop string from the middle of token 10 to the middle of token 12 (3 tokens).
    start = len("".join(pieces[:10])) + len(pieces[10]) // 2
    end = len("".join(pieces[:12])) + max(1, len(pieces[12]) // 2)
    stop = full[start:end]
    assert len(stop) >= 2
    deltas, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=40, ignore_eos=True, stop=("never there", stop)))
    text = "".join(d.text for d in deltas)
    assert text == full[: full.index(stop)]
    assert finish.reason == FINISH_STOP and finish.stop_sequence == stop


def test_eos_ends_generation_and_min_tokens_delays_it(generator):
    ids = prompt_ids(generator, "Hello")
    eos = generator.eos_ids[0]
    forced = SamplingParams(temperature=0, logit_bias={eos: 100})
    deltas, finish = run(generator, GenerationRequest(ids, forced, max_tokens=10))
    assert finish.reason == FINISH_STOP and finish.stop_token_id == eos and finish.usage.completion_tokens == 1
    assert "".join(d.text for d in deltas) == ""
    deltas, finish = run(generator, GenerationRequest(ids, forced, max_tokens=10, min_tokens=3))
    assert [t for d in deltas for t in d.token_ids][3] == eos and finish.usage.completion_tokens == 4
    _, finish = run(generator, GenerationRequest(ids, forced, max_tokens=5, ignore_eos=True))
    assert finish.reason == FINISH_LENGTH and finish.usage.completion_tokens == 5


def test_stop_token_ids_end_like_eos(generator):
    ids = prompt_ids(generator, "Hello")
    deltas, _ = run(generator, GenerationRequest(ids, GREEDY, max_tokens=6, ignore_eos=True))
    third = deltas[2].token_ids[0]
    _, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=6, ignore_eos=True, stop_token_ids=(third,)))
    assert finish.stop_token_id == third and finish.usage.completion_tokens == 3


def test_same_seed_same_text_different_seed_different_text(generator):
    ids = prompt_ids(generator, "Once upon a time")

    def text(seed):
        deltas, finish = run(generator, GenerationRequest(ids, SamplingParams(temperature=1.0, seed=seed), max_tokens=24, ignore_eos=True))
        assert finish.seed == seed
        return "".join(d.text for d in deltas)

    assert text(11) == text(11)
    assert text(11) != text(12)


def test_logprobs_describe_the_chosen_tokens(generator):
    ids = prompt_ids(generator, "Logprobs please")
    params = SamplingParams(temperature=0, logprobs=True, top_logprobs=4)
    deltas, _ = run(generator, GenerationRequest(ids, params, max_tokens=3, ignore_eos=True))
    decoder = generator.decoder
    decoder.reset(0)
    expected = log_softmax(decoder.prefill(0, list(ids))[-1:].astype(np.float64))[0]
    decoder.reset(0)
    first = deltas[0].logprobs[0]
    assert first.chosen.token_id == deltas[0].token_ids[0] == first.top[0].token_id
    assert first.chosen.logprob == pytest.approx(expected.max(), abs=1e-4)
    assert [c.token_id for c in first.top] == list(np.argsort(-expected)[:4])
    assert first.chosen.bytes.decode("utf-8", "replace") == first.chosen.token


def test_max_tokens_and_a_full_context_end_with_length(generator):
    ids = prompt_ids(generator, "Fill the context")
    _, finish = run(generator, GenerationRequest(ids, GREEDY, ignore_eos=True, context_length=len(ids) + 5))
    assert finish.reason == FINISH_LENGTH and finish.usage.completion_tokens == 5
    deltas, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=0))
    assert deltas == [] and finish.usage.completion_tokens == 0 and finish.usage.prompt_tokens == len(ids)


def test_context_limits_refuse_or_truncate(generator):
    long_prompt = tuple([5] * 120)
    with pytest.raises(ContextLengthError, match="120.*100|100.*120"):
        next(generator.generate(GenerationRequest(long_prompt, GREEDY, context_length=100)))
    _, finish = run(generator, GenerationRequest(long_prompt, GREEDY, max_tokens=10, context_length=100, ignore_eos=True, context_policy=CONTEXT_TRUNCATE))
    assert finish.usage.prompt_tokens == 90 and finish.usage.prompt_tokens_truncated == 30 and finish.usage.completion_tokens == 10


def test_usage_counts_and_timings(generator):
    ids = prompt_ids(generator, "Count me")
    deltas, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=8, ignore_eos=True))
    usage = finish.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (len(ids), 8, len(ids) + 8)
    assert usage.prompt_eval_duration_ns > 0 and usage.eval_duration_ns > 0 and usage.load_duration_ns >= 0
    assert usage.total_duration_ns >= usage.load_duration_ns + usage.prompt_eval_duration_ns + usage.eval_duration_ns
    assert sum(len(d.token_ids) for d in deltas) == 8


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (GenerationRequest((), GREEDY), "prompt"),
        (GenerationRequest((10**9,), GREEDY), "prompt"),
        (GenerationRequest((5,), SamplingParams(top_p=0)), "top_p"),
        (GenerationRequest((5,), GREEDY, max_tokens=-1), "max_tokens"),
        (GenerationRequest((5,), GREEDY, max_tokens=2, min_tokens=3), "min_tokens"),
    ],
)
def test_bad_requests_name_their_parameter(generator, request_, param):
    with pytest.raises(RequestError) as error:
        next(generator.generate(request_))
    assert error.value.param == param


def test_closing_a_stream_frees_its_slot_at_the_next_tick(generator):
    ids = prompt_ids(generator, "Cancel me")
    stream = generator.generate(GenerationRequest(ids, GREEDY, ignore_eos=True))
    next(stream), next(stream)
    assert generator.stats().active == 1
    steps = generator.stats().steps
    stream.close()  # what the server does when the client goes away
    deadline = time.monotonic() + 5
    while generator.stats().active and time.monotonic() < deadline:
        time.sleep(0.001)
    assert generator.stats().active == 0
    assert generator.stats().steps - steps <= 2, "the slot should be free within a tick or so"
    # The cancelled request's prompt stays cached in the free slot, for the next one to reuse.
    assert generator.decoder.common_prefix(0, ids) == len(ids)
    _, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=3, ignore_eos=True))
    assert finish.usage.completion_tokens == 3 and finish.usage.cached_tokens == len(ids) - 2


def test_concurrent_callers_each_get_their_own_answer(generator):
    prompts = ["First caller", "Second caller with more words", "Third"]
    expected = [run(generator, GenerationRequest(prompt_ids(generator, p), GREEDY, max_tokens=12, ignore_eos=True))[0] for p in prompts]
    results: dict[int, list[Delta]] = {}

    def worker(index: int) -> None:
        results[index] = run(generator, GenerationRequest(prompt_ids(generator, prompts[index]), GREEDY, max_tokens=12, ignore_eos=True))[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [results[i] for i in range(3)] == expected


def test_the_concat_kv_fallback_generates_the_same_tokens_as_pytorch(tiny_gpt2_engine, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    generator = TextGenerator(load_engine(tiny_gpt2_engine.directory), prefill_chunk=8)
    ids = tuple(generator.tokenize("The fallback path must match the reference model too."))
    deltas, _ = run(generator, GenerationRequest(ids, GREEDY, max_tokens=16, ignore_eos=True))
    reference, _, _ = torch_greedy(AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir)).eval(), ids, 16)
    assert [t for d in deltas for t in d.token_ids] == reference
