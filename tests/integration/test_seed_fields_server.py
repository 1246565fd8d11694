"""The sampling seed fields through the real server (gunicorn, the default int4 engine) and the
official openai client: echo with logprobs, best_of, logit_bias_type, mirostat, suffix."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.server import Server

pytestmark = pytest.mark.integration

DECODER = "smollm2-135m-instruct-int4"
PROMPT = "The capital of France is"


def _tokenize(server: Server, text: str, add_special: bool = True) -> list[int]:
    return httpx.post(f"{server.url}/tokenize", json={"model": DECODER, "content": text, "add_special": add_special}, timeout=30).json()["tokens"]


def test_echo_with_logprobs_scores_the_prompt_as_a_generation_would(oai: openai.OpenAI, server: Server) -> None:
    generated = oai.completions.create(model=DECODER, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2).choices[0]
    # Score prompt + completion (lm-eval-harness's way: echo, logprobs, max_tokens 0).
    scored = oai.completions.create(model=DECODER, prompt=PROMPT + generated.text, max_tokens=0, temperature=0, echo=True, logprobs=2).choices[0]
    assert scored.text == PROMPT + generated.text and scored.finish_reason == "length"
    lp = scored.logprobs
    prompt_ids = _tokenize(server, PROMPT)  # with the BOS the model adds
    n_prompt = len(prompt_ids)
    assert len(lp.tokens) == n_prompt + 5 == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    assert all(isinstance(v, float) and v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[n_prompt] == len(PROMPT)
    assert "".join(lp.tokens[1:]) == PROMPT + generated.text  # after the BOS, the tokens spell the text
    # The generated tokens' log-probabilities, computed again as prompt positions. The first
    # generated token's came from the prompt's prefill too: the same, to float rounding. The others
    # came from decode steps, whose int4 kernels (int8 activations) round differently from a
    # prefill's: up to about 0.1 apart here (the fp32 tiny engine agrees to 1e-3,
    # tests/integration/test_seed_fields_tiny.py).
    assert lp.tokens[n_prompt:] == generated.logprobs.tokens
    assert lp.token_logprobs[n_prompt] == pytest.approx(generated.logprobs.token_logprobs[0], abs=1e-5)
    for scored_lp, generated_lp in zip(lp.token_logprobs[n_prompt:], generated.logprobs.token_logprobs, strict=True):
        assert scored_lp == pytest.approx(generated_lp, abs=0.2)
    for scored_top, generated_top in zip(lp.top_logprobs[n_prompt:], generated.logprobs.top_logprobs, strict=True):
        assert set(scored_top) == set(generated_top)


def test_echo_with_logprobs_streams_the_prompt_scores_first(oai: openai.OpenAI) -> None:
    chunks = list(oai.completions.create(model=DECODER, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1, stream=True))
    first = chunks[0].choices[0]
    assert first.text == PROMPT and first.logprobs.token_logprobs[0] is None and len(first.logprobs.tokens) >= 5
    whole = oai.completions.create(model=DECODER, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1).choices[0]
    streamed_tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed_tokens == whole.logprobs.tokens
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text


def test_best_of_returns_the_most_likely_candidates_and_counts_them_all(oai: openai.OpenAI) -> None:
    common = {"model": DECODER, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 11}
    # The same four candidates (choice i draws with seed + i), all returned.
    every = oai.completions.create(**common, n=4, logprobs=0)
    ranked = sorted(every.choices, key=lambda c: (-sum(c.logprobs.token_logprobs), c.index))
    best = oai.completions.create(**common, n=2, best_of=4)
    assert [c.text for c in best.choices] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1] and all(c.logprobs is None for c in best.choices)
    assert best.usage.completion_tokens == every.usage.completion_tokens  # all four were generated
    assert best.usage.prompt_tokens == every.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="best_of"):
        oai.completions.create(**common, best_of=2, stream=True)
    with pytest.raises(openai.BadRequestError, match="best_of"):
        oai.completions.create(**common, n=3, best_of=2)


def test_logit_bias_by_token_string(oai: openai.OpenAI, server: Server) -> None:
    common = {"model": DECODER, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    greedy = oai.completions.create(**common).choices[0].text
    assert len(_tokenize(server, greedy, add_special=False)) == 1
    banned = oai.completions.create(**common, logit_bias={greedy: -100}, extra_body={"logit_bias_type": "tokens"}).choices[0].text
    assert banned != greedy
    forced_word = " London"
    assert len(_tokenize(server, forced_word, add_special=False)) == 1
    forced = oai.completions.create(**common, logit_bias={forced_word: 100}, extra_body={"logit_bias_type": "tokens"}).choices[0].text
    assert forced == forced_word
    with pytest.raises(openai.BadRequestError, match="logit_bias_type"):
        oai.completions.create(**common, logit_bias={forced_word: 100})  # token strings need logit_bias_type "tokens"


def test_mirostat_is_seeded(oai: openai.OpenAI) -> None:
    common = {"model": DECODER, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0, "seed": 4}
    mirostat = {"mirostat_mode": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.1}
    first = oai.completions.create(**common, extra_body=mirostat).choices[0].text
    assert first == oai.completions.create(**common, extra_body=mirostat).choices[0].text


def test_suffix_needs_fim_tokens_which_smollm2_lacks(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="fill-in-the-middle") as caught:
        oai.completions.create(model=DECODER, prompt="def add(a, b):", suffix="    return c", max_tokens=8)
    assert caught.value.body["param"] == "suffix"
