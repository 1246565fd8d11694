"""Every field of the seed APIs is either honoured or refused with a 400 that names it.

The refused fields come from the models' own `refused` tables, so a field added there is
tested here without more code; the honoured ones are sent one at a time and their effect on
the runtime request (or on the answer) is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from api.extras import bodies as extras
from api.ollama import bodies as ollama
from api.openai import bodies as openai
from api.wire import Body, Refused
from runtime.request import GenerationRequest
from tests.api.fakes import FakeGenerator

CHAT = [{"role": "user", "content": "Hi"}]

# route → (the body's model, a minimal valid body)
ROUTES: dict[str, tuple[type[Body], dict[str, Any]]] = {
    "/v1/chat/completions": (openai.ChatCompletionRequest, {"model": "fake-chat", "messages": CHAT}),
    "/v1/completions": (openai.CompletionRequest, {"model": "fake-chat", "prompt": "Hi"}),
    "/v1/embeddings": (openai.EmbeddingRequest, {"model": "fake-embed", "input": "Hi"}),
    "/api/generate": (ollama.GenerateRequest, {"model": "fake-chat", "prompt": "Hi", "stream": False}),
    "/api/chat": (ollama.ChatRequest, {"model": "fake-chat", "messages": CHAT, "stream": False}),
    "/api/embed": (ollama.EmbedRequest, {"model": "fake-embed", "input": "Hi"}),
    "/api/embeddings": (ollama.EmbeddingsRequest, {"model": "fake-embed", "prompt": "Hi"}),
    "/api/show": (ollama.ShowRequest, {"model": "fake-chat"}),
    "/tokenize": (extras.TokenizeRequest, {"model": "fake-chat", "content": "Hi"}),
}

# A value of each refused field that asks for something this server cannot do.
ASKING: dict[str, Any] = {
    "mirostat": 2, "mirostat_mode": 1, "tfs_z": 0.9, "grammar": "root ::= \"yes\"", "logit_bias_type": "tokens",
    "mirostat_target": 5.0, "mirostat_lr": 0.1, "response_format": {"type": "json_object"},
    "tool_choice": "auto", "parallel_tool_calls": True, "functions": [{"name": "f"}], "function_call": "auto",
    "audio": {"voice": "alloy", "format": "mp3"}, "modalities": ["text", "audio"], "prediction": {"type": "content", "content": "x"},
    "web_search_options": {}, "reasoning_effort": "high", "verbosity": "low", "store": True, "metadata": {"k": "v"},
    "service_tier": "flex", "suffix": "the end", "format": "json", "keep_alive": 0, "think": True, "shift": True,
    "images": ["aGk="], "template": "{{ .Prompt }}", "tools": [{"type": "function", "function": {"name": "f"}}],
    "options": {"temperature": 0.5}, "verbose": True, "with_pieces": True, "parse_special": True,
    "num_keep": 4, "penalize_newline": True, "num_batch": 8, "num_gpu": 1, "main_gpu": 0, "num_thread": 4, "low_vram": True,
    "f16_kv": True, "logits_all": True, "vocab_only": True, "use_mmap": False, "use_mlock": True, "numa": True,
    "tool_calls": [{"function": {"name": "f", "arguments": {}}}], "tool_call_id": "call_1", "tool_name": "f", "thinking": "hmm",
    "include_obfuscation": True, "mirostat_tau": 3.0, "mirostat_eta": 0.5, "refusal": "I cannot help with that.",
}
# Where a refused field lives inside the body, for the nested models.
NESTED: dict[type[Body], Callable[[dict[str, Any], str, Any], tuple[dict[str, Any], str]]] = {
    openai.ChatMessage: lambda body, name, value: ({**body, "messages": [{"role": "assistant", "content": "x", name: value}]}, f"messages[0].{name}"),
    ollama.Message: lambda body, name, value: ({**body, "messages": [{"role": "assistant", "content": "x", name: value}]}, f"messages[0].{name}"),
    ollama.Options: lambda body, name, value: ({**body, "options": {name: value}}, f"options.{name}"),
    openai.StreamOptions: lambda body, name, value: ({**body, "stream": True, "stream_options": {name: value}}, f"stream_options.{name}"),
}
NESTED_IN = {
    "/v1/chat/completions": (openai.ChatMessage, openai.StreamOptions),
    "/api/generate": (ollama.Options,),
    "/api/chat": (ollama.Options, ollama.Message),
}


def _refused_cases() -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for route, (model, base) in ROUTES.items():
        for name in model.refused:
            cases.append((route, {**base, name: ASKING[name]}, name))
        for nested in NESTED_IN.get(route, ()):
            for name in nested.refused:
                body, param = NESTED[nested](base, name, ASKING[name])
                cases.append((route, body, param))
    return cases


@pytest.mark.parametrize("route, body, param", _refused_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_refused_fields_are_a_400_naming_them(client, route: str, body: dict[str, Any], param: str) -> None:
    result = client.simulate_post(route, json=body)
    assert result.status_code == 400, f"{route} {param}: {result.text}"
    if route.startswith("/api/"):
        assert param.split(".")[-1].split("[")[0] in result.json["error"] and "not supported" in result.json["error"]
    else:
        assert result.json["error"]["param"] == param and result.json["error"]["code"] == "unsupported_parameter"


def test_every_refusal_says_why() -> None:
    for model, _ in ROUTES.values():
        for name, refusal in model.refused.items():
            assert isinstance(refusal, Refused) and len(refusal.why) > 20, f"{model.__name__}.{name}"
            assert name in model.__struct_fields__, f"{model.__name__} refuses {name} but does not declare it"


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/chat/completions", {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "store": False, "service_tier": "auto", "modalities": ["text"], "logit_bias_type": "input_ids", "mirostat_mode": 0, "tfs_z": 1.0, "metadata": {}}),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}),
        ("/api/chat", {"keep_alive": "5m", "think": False, "shift": False, "options": {"mirostat": 0, "penalize_newline": False}}),
        ("/api/generate", {"keep_alive": -1, "format": ""}),
        ("/api/embed", {"keep_alive": "10m", "options": {}}),
        ("/api/show", {"verbose": False}),
    ],
)
def test_values_that_ask_for_nothing_are_accepted(client, route: str, body: dict[str, Any]) -> None:
    result = client.simulate_post(route, json={**ROUTES[route][1], **body})
    assert result.status_code == 200, result.text


# -- honoured fields: each one changes the runtime request or the answer ---------------------------

Check = Callable[[GenerationRequest], bool]

SAMPLING: list[tuple[str, Any, Check]] = [
    ("temperature", 0.25, lambda r: r.sampling.temperature == 0.25),
    ("top_k", 7, lambda r: r.sampling.top_k == 7),
    ("top_p", 0.5, lambda r: r.sampling.top_p == 0.5),
    ("min_p", 0.1, lambda r: r.sampling.min_p == 0.1),
    ("typical_p", 0.7, lambda r: r.sampling.typical_p == 0.7),
    ("repeat_penalty", 1.3, lambda r: r.sampling.repeat_penalty == 1.3),
    ("repeat_last_n", 9, lambda r: r.sampling.repeat_last_n == 9),
    ("presence_penalty", 0.5, lambda r: r.sampling.presence_penalty == 0.5),
    ("frequency_penalty", -0.5, lambda r: r.sampling.frequency_penalty == -0.5),
    ("logit_bias", {"101": 5}, lambda r: dict(r.sampling.logit_bias) == {101: 5.0}),
    ("seed", 42, lambda r: r.sampling.seed == 42),
    ("mirostat", 2, lambda r: r.sampling.mirostat == 2),
    ("mirostat_mode", 1, lambda r: r.sampling.mirostat == 1),
    ("mirostat_tau", 3.0, lambda r: r.sampling.mirostat_tau == 3.0),
    ("mirostat_eta", 0.5, lambda r: r.sampling.mirostat_eta == 0.5),
]
EXTRAS: list[tuple[str, Any, Check]] = [
    ("min_tokens", 2, lambda r: r.min_tokens == 2),
    ("stop_token_ids", [5], lambda r: r.stop_token_ids == (5,)),
    ("ignore_eos", True, lambda r: r.ignore_eos),
    ("skip_special_tokens", False, lambda r: not r.skip_special_tokens),
    ("prompt_truncate_len", 3, lambda r: r.prompt_truncate_len == 3),
    ("repetition_penalty", 1.2, lambda r: r.sampling.repeat_penalty == 1.2 and r.sampling.repeat_last_n == -1),
]
OPENAI_GENERATION: list[tuple[str, Any, Check]] = [
    *SAMPLING,
    *EXTRAS,
    ("context_length_exceeded_behavior", "truncate", lambda r: r.context_policy == "truncate"),
    ("stop", ["va"], lambda r: r.stop == ("va",)),
    ("max_tokens", 3, lambda r: r.max_tokens == 3),
]


@pytest.mark.parametrize("name, value, check", OPENAI_GENERATION + [("max_completion_tokens", 2, lambda r: r.max_tokens == 2)], ids=lambda v: v if isinstance(v, str) else "")
def test_openai_chat_fields_reach_the_runtime(make_client, name: str, value: Any, check: Check) -> None:
    generator = FakeGenerator()
    result = make_client(generator).simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, name: value})
    assert result.status_code == 200, result.text
    assert check(generator.requests[-1]), generator.requests[-1]


@pytest.mark.parametrize("name, value, check", OPENAI_GENERATION, ids=lambda v: v if isinstance(v, str) else "")
def test_openai_completion_fields_reach_the_runtime(make_client, name: str, value: Any, check: Check) -> None:
    generator = FakeGenerator()
    result = make_client(generator).simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Hi", name: value})
    assert result.status_code == 200, result.text
    assert check(generator.requests[-1]), generator.requests[-1]


OLLAMA_OPTIONS: list[tuple[str, Any, Check]] = [
    *SAMPLING,
    ("num_predict", 3, lambda r: r.max_tokens == 3),
    ("num_ctx", 40, lambda r: r.context_length == 40),
    ("stop", ["va"], lambda r: r.stop == ("va",)),
]


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("name, value, check", OLLAMA_OPTIONS, ids=lambda v: v if isinstance(v, str) else "")
def test_ollama_options_reach_the_runtime(make_client, route: str, name: str, value: Any, check: Check) -> None:
    generator = FakeGenerator()
    result = make_client(generator).simulate_post(route, json={**ROUTES[route][1], "options": {name: value}})
    assert result.status_code == 200, result.text
    assert check(generator.requests[-1]), generator.requests[-1]


def test_ollama_defaults_differ_from_openai(make_client) -> None:
    generator = FakeGenerator()
    make_client(generator).simulate_post("/api/chat", json=ROUTES["/api/chat"][1])
    sampling = generator.requests[-1].sampling
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.repeat_penalty) == (0.8, 40, 0.9, 1.1)
    assert generator.requests[-1].context_policy == "truncate"


@pytest.mark.parametrize(
    "route, body, check",
    [
        ("/api/chat", {"truncate": False}, lambda r: r.context_policy == "error"),
        ("/api/generate", {"raw": True}, lambda r: r.prompt_ids == (1000, 172, 205)),
        ("/api/generate", {"context": [7, 8]}, lambda r: r.prompt_ids[:2] == (7, 8)),
        ("/api/generate", {"system": "Be brief."}, lambda r: "<system>Be brief." in "".join(chr(i - 100) for i in r.prompt_ids)),
        ("/api/generate", {"logprobs": True, "top_logprobs": 2}, lambda r: r.sampling.logprobs and r.sampling.top_logprobs == 2),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2}, lambda r: r.sampling.logprobs and r.sampling.top_logprobs == 2),
        ("/v1/completions", {"logprobs": 2}, lambda r: r.sampling.logprobs and r.sampling.top_logprobs == 2),
        ("/v1/chat/completions", {"messages": [{"role": "developer", "content": "Rules."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]},
         lambda r: "".join(chr(i - 100) for i in r.prompt_ids) == "<system>Rules.<user>Hi<assistant>"),
    ],
)
def test_prompt_and_logprob_fields(make_client, route: str, body: dict[str, Any], check: Check) -> None:
    generator = FakeGenerator()
    result = make_client(generator).simulate_post(route, json={**ROUTES[route][1], **body})
    assert result.status_code == 200, result.text
    assert check(generator.requests[-1]), generator.requests[-1]


def test_answer_shaping_fields(client) -> None:
    chat = {"model": "fake-chat", "messages": CHAT}
    assert len(client.simulate_post("/v1/chat/completions", json={**chat, "n": 3}).json["choices"]) == 3
    stream = client.simulate_post("/v1/chat/completions", json={**chat, "stream": True, "stream_options": {"include_usage": True}}).text
    assert '"usage":{"prompt_tokens"' in stream and stream.endswith("data: [DONE]\n\n")
    assert client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Say", "echo": True, "max_tokens": 1}).json["choices"][0]["text"] == "SayHello"
    assert client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Say", "n": 2, "best_of": 2}).status_code == 200
    assert len(client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Say", "best_of": 3}).json["choices"]) == 1
    assert client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Say", "n": 2, "best_of": 1}).status_code == 400
    embedded = client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": "Hi", "encoding_format": "base64"}).json
    assert isinstance(embedded["data"][0]["embedding"], str)
    assert client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": "x" * 20, "truncate": True}).status_code == 200
    assert client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": "Hi", "dimensions": 4}).status_code == 200
    assert client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": "Hi", "dimensions": 2}).json["error"]["param"] == "dimensions"
    assert client.simulate_post("/api/embed", json={"model": "fake-embed", "input": "x" * 20, "truncate": False}).status_code == 400
    assert client.simulate_post("/api/show", json={"name": "fake-chat"}).status_code == 200
    assert client.simulate_post("/tokenize", json={"model": "fake-chat", "content": "Hi", "add_special": False}).json == {"tokens": [172, 205]}
    assert client.simulate_post("/detokenize", json={"model": "fake-chat", "tokens": [172, 205]}).json == {"text": "Hi"}


def test_both_names_of_the_repetition_penalty_are_one_too_many(client) -> None:
    result = client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "repeat_penalty": 1.1, "repetition_penalty": 1.2})
    assert result.status_code == 400 and result.json["error"]["param"] == "repetition_penalty"


def test_unknown_fields_stay_ignored(client) -> None:
    result = client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "x_client_trace": "abc", "extra_body": {}})
    assert result.status_code == 200


def test_ollama_sampling_controls_at_the_top_level_count_unless_options_set_them(client) -> None:
    # Ollama reads them only from options; OpenAI-minded clients send them at the top level.
    client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi", "stream": False, "temperature": 0.2, "top_k": 5, "options": {"top_k": 7}})
    sampling = client.generator.requests[-1].sampling
    assert sampling.temperature == 0.2 and sampling.top_k == 7
    client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": [{"role": "user", "content": "Hi"}], "stream": False, "seed": 11})
    assert client.generator.requests[-1].sampling.seed == 11
