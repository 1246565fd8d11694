"""Structured output on the HTTP layer: which grammar each field asks for, tool calls in both dialects, bad input.

The fake engine replies with scripted pieces, so these tests check the translation (request
fields → runtime grammar, tool envelope → tool_calls, streaming deltas); the real engine's
constrained decoding is tested in tests/integration/test_structured.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.grammar import Grammar
from tests.api.fakes import FakeGenerator
from tests.api.test_errors import ollama_error, openai_error

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}}]
ARGUMENTS = '{"city": "Paris"}'
ONE_CALL = '{"tool_call": {"name": "get_weather", "arguments": ' + ARGUMENTS + "}}"
TWO_CALLS = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]}'
WORDS = '{"response": "It is sunny \\u2600 in \\"Paris\\"."}'


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.fixture
def replying(make_client):
    def make(text: str):
        return make_client(FakeGenerator(context_length=4096, reply=pieces(text)))

    return make


def chat(client, **body: Any):
    return client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, **body})


def sse(result) -> list[dict]:
    return [json.loads(line[6:]) for line in result.text.split("\n") if line.startswith("data: {")]


def last_grammar(client) -> Grammar | None:
    return client.generator.requests[-1].grammar


# -- which grammar a field asks for ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"response_format": {"type": "json_object"}}, Grammar.json_object()),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}}, Grammar.json_schema(WEATHER)),
        ({"response_format": {"type": "json_object", "schema": WEATHER}}, Grammar.json_schema(WEATHER)),
        ({"grammar": 'root ::= "yes" | "no"'}, Grammar("gbnf", 'root ::= "yes" | "no"')),
        ({"response_format": {"type": "text"}}, None),
    ],
)
def test_chat_response_format_and_grammar_become_the_request_grammar(replying, body, expected) -> None:
    client = replying('{"a": 1}')
    assert chat(client, **body).status_code == 200
    assert last_grammar(client) == expected


def test_completions_take_response_format_and_grammar(replying) -> None:
    client = replying("yes")
    for body, expected in (
        ({"grammar": 'root ::= "yes" | "no"'}, Grammar("gbnf", 'root ::= "yes" | "no"')),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}}, Grammar.json_schema(WEATHER)),
    ):
        assert client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Sky blue?", **body}).status_code == 200
        assert last_grammar(client) == expected


def test_ollama_format_becomes_the_request_grammar(replying) -> None:
    client = replying('{"a": 1}')
    for route, base in (("/api/generate", {"prompt": "x"}), ("/api/chat", {"messages": CHAT})):
        for fmt, expected in (("json", Grammar.json_object()), (WEATHER, Grammar.json_schema(WEATHER)), ("", None)):
            assert client.simulate_post(route, json={"model": "fake-chat", "stream": False, "format": fmt, **base}).status_code == 200
            assert last_grammar(client) == expected


def test_schema_objects_are_enforced_closed_unless_they_say_otherwise() -> None:
    closed = json.loads(Grammar.json_schema({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}}}).source)
    assert closed["additionalProperties"] is False and closed["properties"]["a"]["additionalProperties"] is False
    opened = json.loads(Grammar.json_schema({"type": "object", "properties": {"a": {}}, "additionalProperties": True}).source)
    assert opened["additionalProperties"] is True
    assert "additionalProperties" not in json.loads(Grammar.json_object().source)


# -- bad input: a 400 naming the field ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "strin"}}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "string", "format": "color"}}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w"}}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_object", "schema": {"type": 3}}}, "response_format.schema"),
        ({"grammar": "root ::= ("}, "grammar"),
        ({"grammar": "   "}, "grammar"),
        ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS + TOOLS}, "tools[1]"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": WEATHER, "strict": True}}]}, "tools[0].parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]}, "tools[0].parameters"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": TOOLS, "functions": [{"name": "f"}]}, "functions"),
        ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call.name"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0].tool_calls"),
    ],
)
def test_bad_structured_input_is_a_400_naming_the_field(client, body, param) -> None:
    error = openai_error(chat(client, **body), 400)
    assert error["param"] == param, error


def test_ollama_bad_format_and_tools_are_400s(client) -> None:
    for body in ({"format": {"type": "strin"}}, {"format": "yaml"}, {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]}, {"grammar": "root ::= ("}):
        ollama_error(client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": CHAT, "stream": False, **body}), 400)


def test_strict_compatible_schemas_pass() -> None:
    from api.generation.grammars import strict_problem

    strict = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"], "additionalProperties": False}}, "required": ["a"], "additionalProperties": False}
    assert strict_problem(strict) is None
    assert "additionalProperties" in (strict_problem({**strict, "additionalProperties": True}) or "")
    assert "required" in (strict_problem({**strict, "required": []}) or "")


# -- tool calls, OpenAI ---------------------------------------------------------------------------------


def test_a_tool_call_answer(replying) -> None:
    client = replying(ONE_CALL)
    result = chat(client, tools=TOOLS, tool_choice="required")
    choice = result.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 1
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    request = client.generator.requests[-1]
    schema = json.loads(request.grammar.source)
    assert list(schema["properties"]) == ["tool_call"]  # required: a call, no words
    prompt = client.generator.detokenize(request.prompt_ids)
    assert "get_weather" in prompt and '"tool_call"' in prompt and "<system>" in prompt


def test_a_named_tool_choice_finishes_with_stop_and_auto_allows_words(replying) -> None:
    client = replying(ONE_CALL)
    result = chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert result.json["choices"][0]["finish_reason"] == "stop"
    assert result.json["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    client = replying(WORDS)
    result = chat(client, tools=TOOLS)
    assert result.json["choices"][0]["message"] == {"role": "assistant", "content": 'It is sunny ☀ in "Paris".', "refusal": None}
    assert result.json["choices"][0]["finish_reason"] == "stop"
    assert set(json.loads(last_grammar(client).source)["anyOf"][1]["properties"]) == {"response"}


def test_parallel_tool_calls_allow_several(replying) -> None:
    client = replying(TWO_CALLS)
    result = chat(client, tools=TOOLS, parallel_tool_calls=True)
    calls = result.json["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert len({c["id"] for c in calls}) == 2
    assert "tool_calls" in json.loads(last_grammar(client).source)["anyOf"][0]["properties"]


def test_tool_choice_none_passes_the_tools_unused(replying) -> None:
    client = replying("Just words.")
    result = chat(client, tools=TOOLS, tool_choice="none")
    assert result.json["choices"][0]["message"]["content"] == "Just words."
    assert last_grammar(client) is None


def test_streamed_tool_call_deltas_join_to_the_call(replying) -> None:
    client = replying(TWO_CALLS)
    chunks = sse(chat(client, tools=TOOLS, parallel_tool_calls=True, stream=True))
    deltas = [d for c in chunks for choice in c["choices"] for d in choice["delta"].get("tool_calls", [])]
    joined: dict[int, dict] = {}
    for delta in deltas:
        entry = joined.setdefault(delta["index"], {"first": delta, "arguments": ""})
        if delta is not entry["first"]:
            assert set(delta) == {"index", "function"} and set(delta["function"]) == {"arguments"}, delta
        entry["arguments"] += delta["function"]["arguments"]
    assert [j["first"]["function"]["name"] for j in joined.values()] == ["get_weather", "get_weather"]
    assert all(j["first"]["type"] == "function" and j["first"]["id"].startswith("call_") for j in joined.values())
    assert [json.loads(j["arguments"]) for j in joined.values()] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any("content" in choice["delta"] and choice["delta"]["content"] for c in chunks for choice in c["choices"])


def test_streamed_words_of_an_auto_answer(replying) -> None:
    client = replying(WORDS)
    chunks = sse(chat(client, tools=TOOLS, stream=True))
    text = "".join(choice["delta"].get("content", "") for c in chunks for choice in c["choices"])
    assert text == 'It is sunny ☀ in "Paris".'
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_legacy_functions_answer_with_function_call(replying) -> None:
    client = replying(ONE_CALL)
    functions = [TOOLS[0]["function"]]
    result = chat(client, functions=functions, function_call={"name": "get_weather"})
    message = result.json["choices"][0]["message"]
    assert message["function_call"] == {"name": "get_weather", "arguments": ARGUMENTS} and "tool_calls" not in message
    chunks = sse(chat(client, functions=functions, stream=True))
    parts = [choice["delta"]["function_call"] for c in chunks for choice in c["choices"] if "function_call" in choice["delta"]]
    assert parts[0]["name"] == "get_weather" and all("name" not in p for p in parts[1:])
    assert "".join(p["arguments"] for p in parts) == ARGUMENTS
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"


def test_tool_history_is_written_in_the_envelope_format(replying) -> None:
    client = replying(WORDS)
    messages = [
        *CHAT,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert chat(client, tools=TOOLS, messages=messages).status_code == 200
    prompt = client.generator.detokenize(client.generator.requests[-1].prompt_ids)
    assert '<assistant>{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}' in prompt
    assert '<tool>{"tool_response": {"id": "call_1", "name": "get_weather", "content": "sunny"}}' in prompt


# -- tool calls, Ollama ------------------------------------------------------------------------------


def test_ollama_tool_calls_whole_and_streamed(replying) -> None:
    client = replying(ONE_CALL)
    body = {"model": "fake-chat", "messages": CHAT, "tools": TOOLS}
    result = client.simulate_post("/api/chat", json={**body, "stream": False})
    message = result.json["message"]
    assert message["content"] == "" and result.json["done_reason"] == "stop"
    assert message["tool_calls"][0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    lines = [json.loads(line) for line in client.simulate_post("/api/chat", json=body).text.splitlines()]
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1 and with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert lines[-1]["done"] is True and not lines[-1]["message"].get("tool_calls")


def test_ollama_tool_history(replying) -> None:
    client = replying(WORDS)
    messages = [
        *CHAT,
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
    ]
    result = client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": messages, "tools": TOOLS, "stream": False})
    assert result.json["message"]["content"] == 'It is sunny ☀ in "Paris".'
    prompt = client.generator.detokenize(client.generator.requests[-1].prompt_ids)
    assert '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}' in prompt
    assert '{"tool_response": {"name": "get_weather", "content": "sunny"}}' in prompt


# -- the envelope reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_the_reader_gives_the_same_calls_however_the_text_is_split(size: int) -> None:
    from api.tools.readers import EnvelopeReader

    text = '{"tool_calls": [{"arguments": {"q": "a\\"b\\u00e9\\ud83d\\ude00", "n": [1, 2.5e3, true, null]}, "name": "s"}, {"name": "t", "arguments": {}}]}'
    whole = EnvelopeReader()
    whole.feed(text)
    split = EnvelopeReader()
    streamed: dict[int, str] = {}
    names = []
    for piece in pieces(text, size):
        update = split.feed(piece)
        names += [c.name for c in update.started]
        for index, fragment in update.arguments:
            streamed[index] = streamed.get(index, "") + fragment
    assert names == ["s", "t"] == [c.name for c in whole.calls]
    assert streamed == {c.index: c.arguments for c in whole.calls}
    assert json.loads(whole.calls[0].arguments) == {"q": 'a"bé😀', "n": [1, 2500.0, True, None]}


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_the_reader_streams_the_words_of_a_response_however_split(size: int) -> None:
    from api.tools.readers import EnvelopeReader

    words = 'plain, "quoted" \\ back\tslash, é ☀ 😀 end. ' * 5
    text = json.dumps({"response": words})  # ASCII escapes, surrogate pairs included
    reader = EnvelopeReader()
    streamed = "".join(reader.feed(piece).text for piece in pieces(text, size))
    assert streamed == words == reader.content and not reader.calls


# -- templates with their own tool format (Hermes: <tool_call> blocks) -----------------------------------

# The tool part of a Qwen2.5-style template: tools listed in the system turn, calls as <tool_call> blocks.
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    "Return calls as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{% for call in message.tool_calls or [] %}<tool_call>\n{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}\n</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)
HERMES_CALL = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def hermes(make_client):
    def make(text: str):
        return make_client(FakeGenerator(context_length=4096, reply=pieces(text), chat_template_source=HERMES_TEMPLATE))

    return make


def test_a_hermes_template_gets_the_tools_itself_and_its_calls_are_read(hermes) -> None:
    client = hermes(HERMES_CALL)
    result = chat(client, tools=TOOLS)
    choice = result.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    request = client.generator.requests[-1]
    assert request.grammar is None, "auto: words, calls or both, read afterwards"
    prompt = client.generator.detokenize(request.prompt_ids)
    assert prompt.startswith('<tools>[{"type": "function", "function": {"name": "get_weather"') and '"tool_call"' not in prompt


def test_a_hermes_required_call_is_constrained_to_blocks(hermes) -> None:
    client = hermes(HERMES_CALL.split("check.", 1)[1])
    result = chat(client, tools=TOOLS, tool_choice="required")
    assert result.json["choices"][0]["message"]["content"] is None
    grammar = client.generator.requests[-1].grammar
    assert grammar.kind == "lark" and "%json" in grammar.source and "<tool_call>" in grammar.source
    grammar.check()


def test_hermes_streams_words_then_the_whole_call(hermes) -> None:
    client = hermes(HERMES_CALL)
    chunks = sse(chat(client, tools=TOOLS, stream=True))
    text = "".join(choice["delta"].get("content") or "" for c in chunks for choice in c["choices"])
    assert text == "Let me check."
    calls = [d for c in chunks for choice in c["choices"] for d in choice["delta"].get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["function"] == {"name": "get_weather", "arguments": ARGUMENTS} and calls[0]["id"].startswith("call_")
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_hermes_words_that_only_look_like_a_call_are_words(hermes) -> None:
    client = hermes("A <tool_ thing and <tool_call>not json</tool_call> end <tool")
    chunks = sse(chat(client, tools=TOOLS, stream=True))
    text = "".join(choice["delta"].get("content") or "" for c in chunks for choice in c["choices"])
    assert text == "A <tool_ thing and <tool_call>not json</tool_call> end <tool"
    assert chat(client, tools=TOOLS).json["choices"][0]["message"]["content"] == text


def test_hermes_history_goes_to_the_template_as_tool_calls(hermes) -> None:
    client = hermes("Sunny.")
    messages = [
        *CHAT,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert chat(client, tools=TOOLS, messages=messages).json["choices"][0]["message"]["content"] == "Sunny."
    prompt = client.generator.detokenize(client.generator.requests[-1].prompt_ids)
    assert '<assistant>[{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]' in prompt
    assert "<tool>sunny" in prompt


def test_ollama_with_a_hermes_template(hermes) -> None:
    client = hermes(HERMES_CALL)
    result = client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": CHAT, "tools": TOOLS, "stream": False})
    assert result.json["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert result.json["message"]["content"] == "Let me check."


def test_a_hermes_template_renders_tools_and_calls() -> None:
    from api.tools.plan import HERMES, Tool, ToolPlan, history_message, tool_format
    from runtime.chat import ChatTemplate

    assert tool_format(HERMES_TEMPLATE) == HERMES and tool_format("{{ messages }}") == "generic" and tool_format(None) == "generic"
    plan = ToolPlan((Tool("get_weather", "Weather now", WEATHER),), format=HERMES)
    messages, template_tools = plan.prompt([{"role": "user", "content": "Weather?"}])
    history = [*messages, history_message("assistant", "", [("get_weather", ARGUMENTS)], format=HERMES), history_message("tool", "sunny", tool_name="get_weather", format=HERMES)]
    text = ChatTemplate.compile(HERMES_TEMPLATE).render(history, tools=template_tools)
    assert '{"type": "function", "function": {"name": "get_weather", "description": "Weather now"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>tool\nsunny" in text


@pytest.mark.parametrize("size", [1, 2, 4, 9])
def test_the_hermes_reader_however_split(size: int) -> None:
    from api.tools.readers import HermesReader

    text = 'Two calls: <tool_call>\n{"name": "a", "arguments": {"x": [1, "é"]}}\n</tool_call>\n<tool_call>\n{"name": "b", "parameters": "{\\"y\\": 2}"}\n</tool_call> tail'
    reader = HermesReader()
    words, calls = "", []
    for piece in pieces(text, size):
        update = reader.feed(piece)
        words += update.text
        calls += [(c.name, c.arguments) for c in update.completed]
    words += reader.finish().text
    assert words == "Two calls: " == reader.content
    assert calls == [("a", '{"x": [1, "é"]}'), ("b", '{"y": 2}')]
