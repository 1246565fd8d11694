"""The sampling seed fields on a tiny real engine: prompt log-probabilities, mirostat,
logit_bias_type "tokens" and fill-in-the-middle prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from api.openai import protocol
from api.openai.bodies import CompletionRequest
from api.settings import ServerSettings
from api.wire import decode
from runtime.engine import load_engine
from runtime.events import Delta, Finish
from runtime.generation import TextGenerator
from runtime.request import GenerationRequest
from runtime.sampling import SamplingParams, log_softmax
from tests.tiny_models import FIM_TOKENS

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def generator(tiny_llama_engine) -> TextGenerator:
    # Chunks of 16: a prompt's log-probabilities come from several prefill runs.
    return TextGenerator(load_engine(tiny_llama_engine.directory), prefill_chunk=16)


def run(generator: TextGenerator, request: GenerationRequest) -> tuple[list[Delta], Finish]:
    events = list(generator.generate(request))
    assert isinstance(events[-1], Finish) and all(isinstance(e, Delta) for e in events[:-1])
    return events[:-1], events[-1]  # type: ignore[return-value]


def prompt_ids(generator: TextGenerator, text: str) -> tuple[int, ...]:
    return tuple(generator.chat_prompt_ids([{"role": "user", "content": text}]))


def test_prompt_logprobs_are_the_models_distribution_at_each_position(generator) -> None:
    ids = prompt_ids(generator, "Tell me a long story about the sea, the sky and the quick brown fox.")
    assert len(ids) > 40  # three prefill chunks at least
    deltas, finish = run(generator, GenerationRequest(ids, GREEDY, max_tokens=2, prompt_logprobs=3))
    first = deltas[0]
    assert first.prompt_logprobs is not None and first.token_ids == () and first.text == ""
    assert all(d.prompt_logprobs is None for d in deltas[1:]) and finish.usage.completion_tokens == 2
    scored = first.prompt_logprobs
    assert scored.first_token_id == ids[0] and len(scored.rest) == len(ids) - 1
    # The reference: one prefill of the whole prompt keeping every position's logits, on an idle decoder.
    decoder = generator.decoder
    decoder.reset(0)
    expected = log_softmax(decoder.prefill(0, list(ids), logits_to_keep=len(ids)).astype(np.float64))
    decoder.reset(0)
    for i, record in enumerate(scored.rest, 1):
        assert record.chosen.token_id == ids[i]
        assert record.chosen.logprob == pytest.approx(expected[i - 1, ids[i]], abs=1e-4)
        assert [c.token_id for c in record.top] == list(np.argsort(-expected[i - 1], kind="stable")[:3])
        assert record.chosen.token == generator.token_bytes(ids[i]).decode("utf-8", "replace")


def test_scoring_a_generation_gives_back_its_logprobs_and_skips_the_prefix_cache(generator) -> None:
    base = prompt_ids(generator, "Once upon a time")
    params = SamplingParams(temperature=0, logprobs=True, top_logprobs=2)
    deltas, _ = run(generator, GenerationRequest(base, params, max_tokens=8, ignore_eos=True))
    generated = [t for d in deltas for t in d.token_ids]
    logprobs = [lp for d in deltas for lp in d.logprobs]
    full = base + tuple(generated)
    # Without prompt log-probabilities the cached prompt would be reused...
    _, control = run(generator, GenerationRequest(full, GREEDY, max_tokens=0))
    assert control.usage.cached_tokens > 0
    # ...with them the whole prompt is evaluated, so every position has its logits (max_tokens 0: scoring only).
    deltas, finish = run(generator, GenerationRequest(full, GREEDY, max_tokens=0, prompt_logprobs=2))
    assert len(deltas) == 1 and finish.usage.completion_tokens == 0 and finish.usage.cached_tokens == 0
    scored = deltas[0].prompt_logprobs
    assert scored is not None and len(scored.rest) == len(full) - 1
    # A generated token's log-probability (a decode step) is the one scoring gives it (a prefill),
    # within the small difference of the two kernels' rounding.
    for record, generated_record in zip(scored.rest[len(base) - 1 :], logprobs, strict=True):
        assert record.chosen.token_id == generated_record.chosen.token_id
        assert record.chosen.logprob == pytest.approx(generated_record.chosen.logprob, abs=1e-3)
        assert [c.token_id for c in record.top] == [c.token_id for c in generated_record.top]


def test_a_one_token_prompt_has_only_its_first_token(generator) -> None:
    deltas, _ = run(generator, GenerationRequest((ids := prompt_ids(generator, "x"))[:1], GREEDY, max_tokens=1, prompt_logprobs=0))
    assert deltas[0].prompt_logprobs is not None and deltas[0].prompt_logprobs.first_token_id == ids[0] and deltas[0].prompt_logprobs.rest == ()


def test_mirostat_on_the_engine_is_seeded_and_differs_from_plain_sampling(generator) -> None:
    ids = prompt_ids(generator, "Once upon a time")

    def tokens(**sampling: float) -> list[int]:
        deltas, _ = run(generator, GenerationRequest(ids, SamplingParams(seed=5, **sampling), max_tokens=24, ignore_eos=True))  # type: ignore[arg-type]
        return [t for d in deltas for t in d.token_ids]

    mirostat = tokens(mirostat=2, mirostat_tau=1.0)
    assert mirostat == tokens(mirostat=2, mirostat_tau=1.0)
    assert mirostat != tokens()  # the same seed, plain sampling
    assert tokens(mirostat=1, mirostat_tau=1.0) == tokens(mirostat=1, mirostat_tau=1.0)


def _completion(generator: TextGenerator, body: bytes) -> GenerationRequest:
    plan = protocol.parse_completion(decode(body, CompletionRequest), generator, ServerSettings())
    return plan.choices[0].request


def test_logit_bias_by_token_string_bans_and_forces_the_greedy_token(generator) -> None:
    prompt = b'"model": "m", "prompt": "The quick brown", "max_tokens": 1, "temperature": 0'
    deltas, _ = run(generator, _completion(generator, b"{" + prompt + b"}"))
    greedy = deltas[0].token_ids[0]
    text = generator.detokenize([greedy])
    assert generator.tokenize(text, add_special_tokens=False) == [greedy]  # the string names exactly that token
    banned = _completion(generator, b"{" + prompt + b', "logit_bias_type": "tokens", "logit_bias": ' + json.dumps({text: -100}).encode() + b"}")
    assert dict(banned.sampling.logit_bias) == {greedy: -100.0}
    assert run(generator, banned)[0][0].token_ids[0] != greedy
    other = next(t for t in range(50, 400) if t != greedy and len(generator.tokenize(generator.detokenize([t]), add_special_tokens=False)) == 1)
    forced = _completion(generator, b"{" + prompt + b', "logit_bias_type": "tokens", "logit_bias": ' + json.dumps({generator.detokenize([other]): 100}).encode() + b"}")
    assert run(generator, forced)[0][0].token_ids[0] == other


@pytest.fixture(scope="module")
def fim_generator(tmp_path_factory: pytest.TempPathFactory) -> TextGenerator:
    from export.options import ExportOptions
    from export.pipeline import export_model
    from tests.tiny_models import make_tiny_llama

    source = make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-fim", fim=True)
    engine = export_model(str(source), tmp_path_factory.mktemp("engines") / "tiny-fim", ExportOptions(max_context=256))
    return TextGenerator(load_engine(Path(engine.directory)))


def test_fill_in_the_middle_prompts_use_the_vocabularys_fim_tokens(generator, fim_generator) -> None:
    assert generator.fim_token_ids is None  # the plain tiny vocabulary has none
    fim = fim_generator.fim_token_ids
    assert fim == tuple(fim_generator.tokenizer.token_to_id(t) for t in FIM_TOKENS)
    request = _completion(fim_generator, b'{"model": "m", "prompt": "def add(a, b):", "suffix": "    return c", "max_tokens": 4, "temperature": 0}')
    prefix = fim_generator.tokenize("def add(a, b):", add_special_tokens=False)
    suffix = fim_generator.tokenize("    return c", add_special_tokens=False)
    head = fim_generator.tokenize("")  # BOS, if the model adds one
    assert request.prompt_ids == (*head, fim[0], *prefix, fim[1], *suffix, fim[2])
    deltas, finish = run(fim_generator, request)
    assert finish.usage.prompt_tokens == len(request.prompt_ids) and sum(len(d.token_ids) for d in deltas) == finish.usage.completion_tokens


def test_prompt_logprobs_on_a_concatenating_graph(tiny_gpt2_engine) -> None:
    generator = TextGenerator(load_engine(tiny_gpt2_engine.directory), prefill_chunk=8)
    try:
        ids = tuple(generator.tokenize("The quick brown fox jumps over the lazy dog."))
        deltas, _ = run(generator, GenerationRequest(ids, GREEDY, max_tokens=1, prompt_logprobs=1))
        scored = deltas[0].prompt_logprobs
        assert scored is not None and len(scored.rest) == len(ids) - 1
        decoder = generator.decoder
        decoder.reset(0)
        expected = log_softmax(decoder.prefill(0, list(ids), logits_to_keep=len(ids)).astype(np.float64))
        decoder.reset(0)
        got = [r.chosen.logprob for r in scored.rest]
        assert got == pytest.approx([expected[i - 1, ids[i]] for i in range(1, len(ids))], abs=1e-4)
    finally:
        generator.close()
