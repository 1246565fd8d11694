"""Speculative decoding (prompt lookup and draft engines), on the real int4 engine and the tiny one.

What speculation guarantees (runtime/speculation.py): a speculating sequence's every step is a
run of two or more positions, so its tokens are what evaluating its text as a prompt gives,
position by position: greedy output equals that teacher-forced reference, whatever the drafts
were, wherever they were rejected, and beside other speculating streams. It is not bit for bit
the output of ordinary decode steps (other kernels; the int4 engine's int8 activations turn
last-bit differences into different tokens on near ties): on the fp32 engine the two agree
except where the two best tokens nearly tie, which is checked here too.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from runtime.decoder import open_decoder
from runtime.engine import load_engine
from runtime.events import Delta, Finish
from runtime.generation import TextGenerator
from runtime.grammar import Grammar
from runtime.job import Job
from runtime.request import GenerationRequest
from runtime.sampling import SamplingParams
from runtime.sequence import SequenceState
from runtime.speculation import PromptLookup
from tests.integration.test_scheduler import run_together, tokens_of

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0)

PASSAGE = (
    "The Riverside Community Garden opened in April 2019 on the corner of Elm Street and Harbor Road. It was founded by "
    "Maria Lopez, a retired schoolteacher, and Daniel Okafor, who runs the hardware store next door. The garden has 42 raised "
    "beds, a tool shed and a rainwater tank that holds 3,000 liters."
)
PROMPTS = [
    f"Using only this passage, say who founded the garden and when it opened, quoting the passage.\n\n{PASSAGE}",
    "def total(items):\n    result = 0\n    for item in items:\n        result = result + item\n    return result\n\nAdd type hints to this code and return all of it.",
    "Explain briefly why the sky is blue during the day.",
    "List three prime numbers.",
]


def chat(generator: TextGenerator, prompt: str, tokens: int = 40, **fields) -> GenerationRequest:
    ids = tuple(generator.chat_prompt_ids([{"role": "user", "content": prompt}]))
    return GenerationRequest(ids, fields.pop("sampling", GREEDY), max_tokens=tokens, ignore_eos=True, **fields)


def teacher_forced(decoder, prompt: tuple[int, ...], tokens: list[int]) -> list[int]:
    """The greedy token at every position when the prompt and `tokens` are evaluated as one prompt."""
    decoder.reset(0)
    logits = decoder.prefill(0, list(prompt) + tokens[:-1], logits_to_keep=len(tokens))
    return [int(i) for i in logits.argmax(-1)]


@pytest.fixture(scope="module")
def int4(default_engines):
    return load_engine(default_engines["int4"])


@pytest.fixture(scope="module")
def speculating(int4):
    generator = TextGenerator(int4, slots=4, speculate="ngram", draft_tokens=4, speculate_max_streams=4)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def reference(int4):
    return open_decoder(int4, slots=1)


def test_greedy_output_is_the_text_evaluated_as_a_prompt(speculating, reference):
    before = speculating.stats()
    for prompt in PROMPTS:
        request = chat(speculating, prompt)
        tokens, finish = tokens_of(speculating, request)
        assert len(tokens) == 40 and finish.reason == "length"
        assert tokens == teacher_forced(reference, request.prompt_ids, tokens), prompt
    stats = speculating.stats()
    steps = stats.speculative_steps - before.speculative_steps
    assert stats.speculation == "ngram" and stats.steps == before.steps  # every step speculated: no batched decode step ran
    assert stats.speculative_tokens - before.speculative_tokens == 4 * 39  # every token but each prompt's first came from a speculative step
    assert steps < 4 * 39  # drafts were kept: fewer steps than tokens
    assert 0 < stats.accepted_tokens - before.accepted_tokens <= stats.draft_tokens - before.draft_tokens


class ScriptedDrafter(PromptLookup):
    """Drafts the reference's next tokens with the one at `wrong` (an index into the draft, or
    None: none; "all": every one) replaced by another token: a rejection at that position."""

    def __init__(self, prompt, reference: list[int], wrong) -> None:
        super().__init__(prompt, draft_tokens=4)
        self.prompt_length, self.reference, self.wrong = len(prompt), reference, wrong
        self.drafted = 0

    def draft(self, limit: int) -> list[int]:
        done = len(self.tokens) - self.prompt_length  # tokens generated so far, the held one included
        draft = list(self.reference[done : done + min(4, limit)])
        for i in range(len(draft)):
            if self.wrong == "all" or self.wrong == i:
                draft[i] = (draft[i] + 1) % 49152
        self.drafted += len(draft)
        return draft


def run_drafted(generator: TextGenerator, request: GenerationRequest, drafter: PromptLookup) -> list[int]:
    job = Job(SequenceState(request, generator.prepare(request), generator.eos_ids, generator), time.perf_counter_ns(), drafter=drafter)
    generator.scheduler.submit(job)
    events = list(job.events_until_finish())
    assert isinstance(events[-1], Finish)
    return [t for e in events if isinstance(e, Delta) for t in e.token_ids]


@pytest.mark.parametrize("wrong", [None, 0, 1, 2, 3, "all"])
def test_a_rejection_at_any_position_changes_nothing(speculating, reference, wrong):
    request = chat(speculating, PROMPTS[0], tokens=24)
    plain = tokens_of(speculating, request)[0]
    before = speculating.stats()
    drafter = ScriptedDrafter(request.prompt_ids, plain, wrong)
    assert run_drafted(speculating, request, drafter) == plain
    stats = speculating.stats()
    accepted, drafted = stats.accepted_tokens - before.accepted_tokens, stats.draft_tokens - before.draft_tokens
    assert drafted == drafter.drafted > 0
    if wrong is None:
        assert accepted == drafted  # every guess right: all kept
    elif wrong in (0, "all"):
        assert accepted == 0  # the first guess wrong: nothing kept, one token per step
    else:
        assert 0 < accepted < drafted


def test_greedy_output_alone_equals_beside_other_speculating_streams(speculating):
    requests = [chat(speculating, p, tokens=32) for p in PROMPTS]
    alone = [tokens_of(speculating, r)[0] for r in requests]
    assert run_together(speculating, requests) == alone
    assert run_together(speculating, requests, stagger_s=0.02) == alone


def test_beyond_the_stream_limit_steps_are_batched(int4):
    generator = TextGenerator(int4, slots=4, speculate="ngram")  # speculate_max_streams=1
    try:
        requests = [chat(generator, p, tokens=n) for p, n in zip(PROMPTS, (40, 8, 8, 8))]
        together = run_together(generator, requests)
        assert [len(t) for t in together] == [40, 8, 8, 8]
        stats = generator.stats()
        assert stats.steps > 0  # batched steps ran while several decoded
        assert stats.speculative_steps > 0  # and the longest one speculated once it was alone
    finally:
        generator.close()


def test_speculation_on_fp32_differs_from_plain_decoding_only_on_near_ties(default_engines):
    engine = load_engine(default_engines["decoder"])
    plain = TextGenerator(engine, slots=2)
    spec = TextGenerator(engine, slots=2, speculate="ngram")
    decoder = open_decoder(engine, slots=1)
    try:
        for prompt in PROMPTS:
            request = chat(plain, prompt)
            a, b = tokens_of(plain, request)[0], tokens_of(spec, request)[0]
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            if first is not None:  # where they part, the two best tokens were within rounding of each other
                decoder.reset(0)
                row = decoder.prefill(0, list(request.prompt_ids) + b[:first], logits_to_keep=1)[-1]
                best, second = np.sort(row)[-2:][::-1]
                assert best - second < 1e-3, (prompt, first, best - second)
    finally:
        plain.close()
        spec.close()


PEOPLE = {
    "type": "object",
    "properties": {"founders": {"type": "array", "items": {"type": "string"}, "maxItems": 3}, "year": {"type": "integer"}},
    "required": ["founders", "year"],
}


def test_grammar_constrained_speculation_stays_valid(speculating):
    before = speculating.stats()
    ids = tuple(speculating.chat_prompt_ids([{"role": "user", "content": f"Return the garden's founders and the year it opened as JSON.\n\n{PASSAGE}"}]))
    text, finish = speculating.complete(GenerationRequest(ids, GREEDY, max_tokens=120, grammar=Grammar.json_schema(PEOPLE)))
    assert finish.reason == "stop", text
    value = json.loads(text)
    assert set(value) == {"founders", "year"} and isinstance(value["year"], int) and len(value["founders"]) <= 3
    assert speculating.stats().draft_tokens > before.draft_tokens  # drafts were checked under the grammar


# -- the tiny engine: mechanics ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama_engine):
    return load_engine(tiny_llama_engine.directory)


def tiny_request(max_tokens, sampling=GREEDY) -> GenerationRequest:
    return GenerationRequest(tuple(range(10, 30)) * 2, sampling, max_tokens=max_tokens, ignore_eos=True)


def test_cancel_during_a_speculative_step_frees_the_slot(tiny_engine):
    generator = TextGenerator(tiny_engine, slots=1, speculate="ngram")
    entered, release = threading.Event(), threading.Event()
    prefill = generator.decoder.prefill

    def held_prefill(slot, ids, logits_to_keep=1):
        if logits_to_keep > 1:  # a speculative step (prompts keep one position's logits)
            entered.set()
            assert release.wait(30)
        return prefill(slot, ids, logits_to_keep)

    generator.decoder.prefill = held_prefill  # type: ignore[method-assign]
    try:
        stream = generator.generate(tiny_request(200))
        assert entered.wait(30)
        stream.close()  # the client goes away while the step runs
        release.set()
        deadline = time.monotonic() + 10
        while generator.stats().active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert generator.stats().active == 0
        generator.decoder.prefill = prefill  # type: ignore[method-assign]
        tokens, finish = tokens_of(generator, tiny_request(8))  # the one slot serves the next request
        assert len(tokens) == 8 and finish.reason == "length"
    finally:
        release.set()
        generator.close()


def test_a_sequence_that_fills_the_context_speculates_to_its_end(tiny_engine):
    generator = TextGenerator(tiny_engine, slots=1, speculate="ngram", draft_tokens=3)
    try:
        request = tiny_request(None)
        generator.decoder.max_length = len(request.prompt_ids) + 9  # the context fills after 9 generated tokens
        tokens, finish = tokens_of(generator, request)
        assert len(tokens) == 9 and finish.reason == "length"
        assert generator.decoder.length(0) <= generator.decoder.max_length
        assert generator.stats().speculative_tokens == 8  # all but the first (from the prompt) came from speculative steps
        reference = open_decoder(tiny_engine, slots=1)
        assert tokens == teacher_forced(reference, request.prompt_ids, tokens)
    finally:
        generator.close()


def test_seeded_sampling_with_speculation_is_reproducible(tiny_engine):
    generator = TextGenerator(tiny_engine, slots=2, speculate="ngram")
    try:
        sampled = SamplingParams(temperature=0.8, top_p=0.95, seed=11)
        first = tokens_of(generator, tiny_request(32, sampled))[0]
        assert tokens_of(generator, tiny_request(32, sampled))[0] == first
        assert tokens_of(generator, tiny_request(32, SamplingParams(temperature=0.8, top_p=0.95, seed=12)))[0] != first
    finally:
        generator.close()


def test_an_engine_that_cannot_cut_its_cache_back_does_not_speculate(tiny_gpt2_engine, caplog):
    generator = TextGenerator(load_engine(tiny_gpt2_engine.directory), slots=1, speculate="ngram")
    try:
        assert generator.stats().speculation is None
        assert "not speculating" in caplog.text
        tokens, _ = tokens_of(generator, GenerationRequest((5, 6, 7), GREEDY, max_tokens=4, ignore_eos=True))
        assert len(tokens) == 4
    finally:
        generator.close()


def test_a_speculated_answer_is_reused_from_the_prefix_cache_on_the_next_turn(speculating):
    messages = [{"role": "user", "content": PROMPTS[0]}]
    first = tuple(speculating.chat_prompt_ids(messages))
    text, _ = speculating.complete(GenerationRequest(first, GREEDY, max_tokens=32))
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "Say it again in fewer words."}]
    second = tuple(speculating.chat_prompt_ids(messages))
    _, finish = speculating.complete(GenerationRequest(second, GREEDY, max_tokens=4))
    # The answer's positions came from speculative steps (prompt kernels): reused, not only the first prompt.
    assert finish.usage.cached_tokens > len(first) + 16


# -- a draft engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_layer_draft(tmp_path_factory):
    """A one-layer tiny llama with the tiny llama's vocabulary (other weights): a poor draft."""
    from export.options import ExportOptions
    from export.pipeline import export_model
    from tests.tiny_models import make_tiny_llama

    folder = make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-draft", num_hidden_layers=1)
    return load_engine(export_model(str(folder), tmp_path_factory.mktemp("engines") / "tiny-draft", ExportOptions(max_context=2048)).directory)


@pytest.mark.parametrize("which", ["itself", "one layer"])
def test_a_draft_engine_changes_speed_not_output(tiny_engine, one_layer_draft, which):
    draft = tiny_engine if which == "itself" else one_layer_draft
    generator = TextGenerator(tiny_engine, slots=2, speculate="draft", draft_engine="unused: given loaded", draft=draft, speculate_max_streams=2)
    try:
        reference = open_decoder(tiny_engine, slots=1)
        for request in (tiny_request(24), GenerationRequest(tuple(range(40, 70)), GREEDY, max_tokens=24, ignore_eos=True)):
            tokens, _ = tokens_of(generator, request)
            assert tokens == teacher_forced(reference, request.prompt_ids, tokens)
        stats = generator.stats()
        assert stats.speculation == "draft" and stats.draft_tokens > 0
        if which == "itself":  # the model's own greedy tokens: nearly all kept (decode and prompt kernels round alike in fp32)
            assert stats.accepted_tokens >= 0.8 * stats.draft_tokens
        # Two streams at once, each with a draft slot of its own; the slots come back at the end.
        assert run_together(generator, [tiny_request(16), tiny_request(20)]) == [tokens_of(generator, r)[0] for r in (tiny_request(16), tiny_request(20))]
        model = generator.draft_model
        assert model is not None and sorted(model._free) == [0, 1]
    finally:
        generator.close()


def test_a_draft_engine_with_another_vocabulary_is_not_used(tiny_engine, tmp_path_factory, caplog):
    from export.options import ExportOptions
    from export.pipeline import export_model
    from tests.tiny_models import make_tiny_llama

    folder = make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-fim", fim=True)  # three more tokens
    other = load_engine(export_model(str(folder), tmp_path_factory.mktemp("engines") / "tiny-fim", ExportOptions(max_context=2048)).directory)
    generator = TextGenerator(tiny_engine, slots=1, speculate="draft", draft_engine="unused", draft=other)
    try:
        assert generator.stats().speculation is None
        assert "vocabularies differ" in caplog.text
        assert len(tokens_of(generator, tiny_request(4))[0]) == 4
    finally:
        generator.close()


def test_a_draft_engine_that_cannot_cut_its_cache_back_is_refused(tiny_engine, tiny_gpt2_engine):
    with pytest.raises(ValueError, match="cannot cut its cache back"):
        TextGenerator(tiny_engine, slots=1, speculate="draft", draft_engine="unused", draft=load_engine(tiny_gpt2_engine.directory))


# -- the server, through the real clients --------------------------------------------------


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_the_server_speculates_and_reports_it(default_engines, tmp_path, method):
    import httpx
    import ollama
    import openai

    from tests.integration.server import Server

    serve = default_engines["int4"]
    # The only real draft we have is the served model itself: every guess right, bar kernel rounding.
    extra = ("--draft-engine", str(serve)) if method == "draft" else ()
    server = Server(serve.parent, tmp_path / "server.log", "--threads", "4", "--speculate", method, *extra)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        question = f"Who founded the garden? Quote the passage.\n\n{PASSAGE}"
        chunks = list(client.chat.completions.create(
            model=serve.name, messages=[{"role": "user", "content": question}], max_tokens=48, temperature=0, stream=True, stream_options={"include_usage": True},
        ))  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        again = client.chat.completions.create(model=serve.name, messages=[{"role": "user", "content": question}], max_tokens=48, temperature=0)
        assert again.choices[0].message.content == text  # deterministic, its prompt now found in the prefix cache
        reply = ollama.Client(host=server.url, timeout=120).chat(model=serve.name, messages=[{"role": "user", "content": question}], options={"num_predict": 48})
        assert reply.message.content and reply.done
        stats = httpx.get(f"{server.url}/health").json()["generators"][serve.name]
        assert stats["speculation"] == method and stats["speculative_steps"] > 0
        assert 0 < stats["accepted_tokens"] <= stats["draft_tokens"]
        assert stats["speculative_tokens"] > stats["speculative_steps"]  # more than one token per step on average
        metrics = httpx.get(f"{server.url}/metrics").text
        assert f'appliance_draft_tokens_accepted{{model="{serve.name}"}} {float(stats["accepted_tokens"])}' in metrics
    finally:
        assert server.stop() == 0, server.log()
