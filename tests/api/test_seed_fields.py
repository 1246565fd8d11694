"""The sampling seed fields, over the fake engine: prompt log-probabilities (echo), best_of,
mirostat, logit_bias_type and suffix (fill-in-the-middle)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.events import Delta, Finish, KeepAlive, TokenChoice, TokenLogprobs
from runtime.request import FittedPrompt, GenerationRequest
from tests.api.fakes import FakeGenerator

SAY = {"model": "fake-chat", "prompt": "Say"}
# The fake tokenizes "Say" as BOS (1000, shown as "<s>") and one token per character.
SAY_IDS = (1000, ord("S") + 100, ord("a") + 100, ord("y") + 100)


def _frames(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]


# -- echo with logprobs: the prompt's own log-probabilities ---------------------------------------


def test_echo_with_logprobs_scores_the_prompt_then_the_completion(make_client) -> None:
    generator = FakeGenerator()
    result = make_client(generator).simulate_post("/v1/completions", json={**SAY, "echo": True, "logprobs": 1, "max_tokens": 2})
    assert result.status_code == 200, result.text
    assert generator.requests[-1].prompt_logprobs == 1
    choice = result.json["choices"][0]
    assert choice["text"] == "SayHello,"
    lp = choice["logprobs"]
    assert lp["tokens"] == ["<s>", "S", "a", "y", "Hello", ","]
    # The first prompt token has nothing before it: null, as OpenAI and vLLM send it.
    assert lp["token_logprobs"] == [None, -0.1, -0.2, -0.3, -0.5, -0.5]
    assert lp["top_logprobs"] == [None, {"S": -0.1}, {"a": -0.2}, {"y": -0.3}, {"Hello": -0.5}, {",": -0.5}]
    # Offsets index the choice's text: the BOS (not in the echoed text) at 0, the completion after "Say".
    assert lp["text_offset"] == [0, 0, 1, 2, 3, 8]


def test_echo_logprobs_with_max_tokens_0_scores_the_prompt_only(make_client) -> None:
    result = make_client(FakeGenerator()).simulate_post("/v1/completions", json={**SAY, "echo": True, "logprobs": 2, "max_tokens": 0})
    assert result.status_code == 200, result.text
    choice = result.json["choices"][0]
    assert choice["text"] == "Say" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["<s>", "S", "a", "y"]
    assert choice["logprobs"]["top_logprobs"][1] == {"S": -0.1, "T": -1.1}
    assert result.json["usage"]["completion_tokens"] == 0 and result.json["usage"]["prompt_tokens"] == 4


def test_prompt_logprobs_are_asked_only_for_echo_with_logprobs(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    for body in ({"echo": True}, {"logprobs": 1}, {}):
        assert client.simulate_post("/v1/completions", json={**SAY, **body}).status_code == 200
        assert generator.requests[-1].prompt_logprobs is None
    result = client.simulate_post("/v1/completions", json={**SAY, "logprobs": 0, "echo": True, "max_tokens": 1}).json
    lp = result["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == [None, -0.1, -0.2, -0.3, -0.5] and lp["top_logprobs"] is None


def test_streamed_echo_carries_the_prompt_logprobs_in_the_prompt_chunk(make_client) -> None:
    result = make_client(FakeGenerator()).simulate_post("/v1/completions", json={**SAY, "echo": True, "logprobs": 1, "max_tokens": 2, "stream": True})
    frames = [f["choices"][0] for f in _frames(result.text)]
    assert frames[0]["text"] == "Say"
    assert frames[0]["logprobs"]["tokens"] == ["<s>", "S", "a", "y"] and frames[0]["logprobs"]["token_logprobs"][0] is None
    assert frames[0]["logprobs"]["text_offset"] == [0, 0, 1, 2]
    assert [(f["text"], f["logprobs"]["text_offset"]) for f in frames[1:3]] == [("Hello", [3]), (",", [8])]
    assert frames[-1]["finish_reason"] == "length"


# -- best_of ---------------------------------------------------------------------------------------


class SeededLogprobs(FakeGenerator):
    """Each candidate writes its seed; its tokens' log-probability is -(seed % 5)."""

    def generate(self, request: GenerationRequest, heartbeat_s: float | None = None, fitted: FittedPrompt | None = None) -> Iterator[Delta | Finish | KeepAlive]:
        fitted = fitted or self.prepare(request)
        self.requests.append(request)
        seed = request.sampling.seed or 0
        for _ in range(3):
            logprobs = (TokenLogprobs(TokenChoice(1, "x", b"x", -float(seed % 5))),) if request.sampling.logprobs else ()
            yield Delta(f"<{seed}>", (1,), logprobs)
        yield self._finish(fitted, 3, "length", seed=seed)


def test_best_of_returns_the_n_most_likely_of_best_of_candidates(make_client) -> None:
    generator = SeededLogprobs()
    # Seeds 12, 13, 14, 15 (choice i: seed + i): log-probabilities -2, -3, -4, 0 a token.
    result = make_client(generator).simulate_post("/v1/completions", json={**SAY, "n": 2, "best_of": 4, "seed": 12, "temperature": 1})
    assert result.status_code == 200, result.text
    assert len(generator.requests) == 4 and all(r.sampling.logprobs for r in generator.requests)  # ranking needs them
    choices = result.json["choices"]
    assert [(c["index"], c["text"]) for c in choices] == [(0, "<15><15><15>"), (1, "<12><12><12>")]
    assert all(c["logprobs"] is None for c in choices)  # not asked for: not sent
    assert result.json["usage"]["completion_tokens"] == 12  # every candidate counts


def test_best_of_per_prompt_and_with_logprobs(make_client) -> None:
    body = {"model": "fake-chat", "prompt": ["A", "B"], "best_of": 3, "seed": 20, "logprobs": 0}
    result = make_client(SeededLogprobs()).simulate_post("/v1/completions", json=body).json
    # Seeds 20, 21, 22 for each prompt: 20 (0 a token) wins.
    assert [(c["index"], c["text"]) for c in result["choices"]] == [(0, "<20><20><20>"), (1, "<20><20><20>")]
    assert result["choices"][0]["logprobs"]["token_logprobs"] == [0.0, 0.0, 0.0]
    assert result["usage"]["completion_tokens"] == 18


@pytest.mark.parametrize(
    "body, param",
    [
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"best_of": 17}, "best_of"),  # beyond max_n
        ({"best_of": 2, "stream": True}, "best_of"),
        ({"best_of": 0}, "best_of"),
        ({"prompt": ["a", "b", "c"], "best_of": 2}, "best_of"),  # 6 completions, max_inputs 4 here
    ],
)
def test_best_of_limits(make_client, body: dict[str, Any], param: str) -> None:
    result = make_client(FakeGenerator(), max_inputs=4).simulate_post("/v1/completions", json={**SAY, **body})
    assert result.status_code == 400, result.text
    assert result.json["error"]["param"] == param


def test_best_of_equal_to_n_streams(client) -> None:
    result = client.simulate_post("/v1/completions", json={**SAY, "n": 2, "best_of": 2, "stream": True})
    assert result.status_code == 200 and {f["choices"][0]["index"] for f in _frames(result.text)} == {0, 1}


# -- mirostat and logit_bias_type ------------------------------------------------------------------


@pytest.mark.parametrize("route, base", [("/v1/completions", SAY), ("/v1/chat/completions", {"model": "fake-chat", "messages": [{"role": "user", "content": "Hi"}]})])
def test_mirostat_fields_reach_the_sampler(make_client, route: str, base: dict[str, Any]) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    for body, expected in [
        ({"mirostat_mode": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2}, (2, 3.0, 0.2)),
        ({"mirostat": 1}, (1, 5.0, 0.1)),
        ({"mirostat": 2, "mirostat_mode": 2}, (2, 5.0, 0.1)),
        ({}, (0, 5.0, 0.1)),
    ]:
        assert client.simulate_post(route, json={**base, **body}).status_code == 200
        s = generator.requests[-1].sampling
        assert (s.mirostat, s.mirostat_tau, s.mirostat_eta) == expected
    for body, param in [({"mirostat": 1, "mirostat_mode": 2}, "mirostat_mode"), ({"mirostat": 3}, "mirostat"), ({"mirostat_tau": -1}, "mirostat_tau"), ({"mirostat_target": 5}, "mirostat_target")]:
        result = client.simulate_post(route, json={**base, **body})
        assert result.status_code == 400 and result.json["error"]["param"] == param, result.text


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
def test_ollama_mirostat_options_reach_the_sampler(make_client, route: str) -> None:
    generator = FakeGenerator()
    body = {"model": "fake-chat", "stream": False, "options": {"mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.3}}
    body.update({"prompt": "Hi"} if route == "/api/generate" else {"messages": [{"role": "user", "content": "Hi"}]})
    assert make_client(generator).simulate_post(route, json=body).status_code == 200
    s = generator.requests[-1].sampling
    assert (s.mirostat, s.mirostat_tau, s.mirostat_eta) == (2, 4.0, 0.3)


def test_logit_bias_type_tokens_biases_every_token_of_each_string(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    result = client.simulate_post("/v1/completions", json={**SAY, "logit_bias_type": "tokens", "logit_bias": {"Hi": -50, "!": 7}})
    assert result.status_code == 200, result.text
    # No BOS: "Hi" is two tokens here, and both get the bias.
    assert dict(generator.requests[-1].sampling.logit_bias) == {ord("H") + 100: -50.0, ord("i") + 100: -50.0, ord("!") + 100: 7.0}
    chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "Hi"}], "logit_bias_type": "tokens", "logit_bias": {"5": 3}}
    assert client.simulate_post("/v1/chat/completions", json=chat).status_code == 200
    assert dict(generator.requests[-1].sampling.logit_bias) == {ord("5") + 100: 3.0}  # "5" is text here, not an id
    ollama = {"model": "fake-chat", "prompt": "Hi", "stream": False, "logit_bias_type": "tokens", "options": {"logit_bias": {"a": 2}}}
    assert client.simulate_post("/api/generate", json=ollama).status_code == 200
    assert dict(generator.requests[-1].sampling.logit_bias) == {ord("a") + 100: 2.0}


def test_logit_bias_keys_must_match_their_type(client) -> None:
    result = client.simulate_post("/v1/completions", json={**SAY, "logit_bias": {"Hi": -5}})
    assert result.status_code == 400 and result.json["error"]["param"] == "logit_bias" and "logit_bias_type" in result.json["error"]["message"]
    result = client.simulate_post("/v1/completions", json={**SAY, "logit_bias_type": "tokens", "logit_bias": {"": -5}})
    assert result.status_code == 400 and result.json["error"]["param"] == "logit_bias"
    result = client.simulate_post("/v1/completions", json={**SAY, "logit_bias_type": "words", "logit_bias": {"1": -5}})
    assert result.status_code == 400 and result.json["error"]["param"] == "logit_bias_type"


# -- suffix: fill-in-the-middle --------------------------------------------------------------------


def test_suffix_builds_a_prefix_suffix_middle_prompt(make_client) -> None:
    generator = FakeGenerator()
    generator.fim_token_ids = (7, 8, 9)
    client = make_client(generator)
    result = client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "ab", "suffix": "c"})
    assert result.status_code == 200, result.text
    assert generator.requests[-1].prompt_ids == (1000, 7, ord("a") + 100, ord("b") + 100, 8, ord("c") + 100, 9)
    assert result.json["choices"][0]["text"] == "Hello, world – ça va?"  # the middle only
    client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": [300, 301], "suffix": "c"})
    assert generator.requests[-1].prompt_ids == (1000, 7, 300, 301, 8, ord("c") + 100, 9)
    result = client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "ab", "suffix": "c", "echo": True})
    assert result.status_code == 400 and result.json["error"]["param"] == "echo"


def test_suffix_without_fim_tokens_is_a_clear_400(client) -> None:
    result = client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "ab", "suffix": "c"})
    assert result.status_code == 400
    error = result.json["error"]
    assert error["param"] == "suffix" and error["code"] == "unsupported_parameter" and "fill-in-the-middle" in error["message"]
    assert client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "ab", "suffix": ""}).status_code == 200


def test_ollama_generate_takes_a_suffix_too(make_client) -> None:
    generator = FakeGenerator()
    generator.fim_token_ids = (7, 8, 9)
    client = make_client(generator)
    result = client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "ab", "suffix": "c", "stream": False})
    assert result.status_code == 200, result.text
    assert generator.requests[-1].prompt_ids == (1000, 7, ord("a") + 100, ord("b") + 100, 8, ord("c") + 100, 9)  # no chat template
    assert result.json["response"] == "Hello, world – ça va?"
    result = client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "ab", "suffix": "c", "context": [1, 2], "stream": False})
    assert result.status_code == 400 and "context" in result.json["error"]


def test_ollama_suffix_without_fim_tokens_is_a_clear_400(client) -> None:
    result = client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "ab", "suffix": "c", "stream": False})
    assert result.status_code == 400 and "fill-in-the-middle" in result.json["error"]
