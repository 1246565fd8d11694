"""Anthropic's Messages API on the HTTP layer, read by the official `anthropic` SDK over the in-process app.

The fake engine replies with scripted pieces, so these tests check the translation: system,
content blocks, tool_use / tool_result history → the chat prompt; the message object, its
typed stream events as the SDK accumulates them, tool calls as tool_use blocks, stop
reasons, usage, count_tokens, the x-api-key header and Anthropic's error shape.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from falcon import testing

from api.app import create_app
from api.models.registry import LoadedModel, ModelRegistry
from tests.api.conftest import make_context
from tests.api.fakes import REPLY, FakeEmbedder, FakeGenerator, info
from tests.api.test_structured import ONE_CALL, TWO_CALLS, WEATHER, pieces

ANSWER = "".join(REPLY)
TOOL = {"name": "get_weather", "description": "Weather now", "input_schema": WEATHER}
KEY = "sk-appliance-test-key-0001"


class Server:
    """The app over a fake engine (4096 positions), with the SDK and a raw test client pointed at it."""

    def __init__(self, generator: FakeGenerator | None = None, context_length: int = 4096, **settings: Any) -> None:
        self.generator = generator or FakeGenerator(context_length=context_length)
        registry = ModelRegistry.of([
            LoadedModel(info("fake-chat", context_length=context_length), generator=self.generator),
            LoadedModel(info("fake-embed", "feature-extraction", 8), embedder=FakeEmbedder()),
        ])
        self.ctx = make_context(self.generator, registry=registry, **settings)
        app = create_app(self.ctx)
        self.http = httpx2.Client(transport=httpx2.WSGITransport(app=app))
        self.sdk = anthropic.Anthropic(base_url="http://appliance", api_key=KEY, http_client=self.http, max_retries=0)
        self.raw = testing.TestClient(app)

    def prompt(self) -> str:
        return self.generator.detokenize(self.generator.requests[-1].prompt_ids)

    def post(self, path: str = "/v1/messages", headers: dict[str, str] | None = None, **body: Any):
        return self.raw.simulate_post(path, json={"model": "fake-chat", **body}, headers=headers)


@pytest.fixture
def server() -> Server:
    return Server()


def replying(text: str, **kwargs: Any) -> Server:
    return Server(FakeGenerator(context_length=4096, reply=pieces(text)), **kwargs)


def events(result) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of an SSE body; the name always equals the data's type."""
    out = []
    for frame in result.text.strip().split("\n\n"):
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), frame
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        out.append((payload["type"], payload))
    return out


def test_a_message_as_the_sdk_reads_it(server: Server) -> None:
    message = server.sdk.messages.create(model="fake-chat", max_tokens=100, system="Be brief", messages=[{"role": "user", "content": "Hi there"}])
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant" and message.model == "fake-chat"
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == ANSWER
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == len(REPLY)
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == len(server.prompt())
    assert message._request_id and message._request_id.startswith("req_")
    assert server.prompt() == "<system>Be brief<user>Hi there<assistant>"


def test_blocks_system_blocks_and_sampling_reach_the_prompt(server: Server) -> None:
    server.sdk.messages.create(
        model="fake-chat", max_tokens=10,
        system=[{"type": "text", "text": "Rule one.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Rule two."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
            {"role": "assistant", "content": "C"},
            {"role": "user", "content": "D"},
        ],
        stop_sequences=["zz"], metadata={"user_id": "u-1"}, extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 7},
    )
    request = server.generator.requests[-1]
    assert server.prompt() == "<system>Rule one.\nRule two.<user>A\nB<assistant>C<user>D<assistant>"
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.top_k) == (0.5, 0.9, 7)
    assert request.stop == ("zz",) and request.max_tokens == 10


def test_stream_events_in_order_and_accumulated_by_the_sdk(server: Server) -> None:
    with server.sdk.messages.stream(model="fake-chat", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == ANSWER and texts == [piece for piece in REPLY]
    assert final.content[0].text == ANSWER and final.stop_reason == "end_turn" and final.usage.output_tokens == len(REPLY)
    raw = server.post(max_tokens=100, messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream") and raw.headers["request-id"].startswith("req_")
    kinds = [kind for kind, _ in events(raw)]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * len(REPLY), "content_block_stop", "message_delta", "message_stop"]
    start, delta = events(raw)[0][1], events(raw)[-2][1]
    assert start["message"]["content"] == [] and start["message"]["stop_reason"] is None and start["message"]["usage"]["input_tokens"] == len("<user>Hi<assistant>")
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None} and delta["usage"]["output_tokens"] == len(REPLY)


def test_stop_reasons() -> None:
    server = Server()
    cut = server.sdk.messages.create(model="fake-chat", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "".join(REPLY[:3])
    stopped = server.sdk.messages.create(model="fake-chat", max_tokens=50, stop_sequences=["never", " wor"], messages=[{"role": "user", "content": "Hi"}])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " wor" and stopped.content[0].text == "Hello,"
    # max_tokens is an upper bound: a context too small for it ends the answer early, as Anthropic says.
    small = Server(context_length=30)
    full = small.sdk.messages.create(model="fake-chat", max_tokens=1000, messages=[{"role": "user", "content": "Hi there"}])
    assert full.stop_reason == "model_context_window_exceeded" and full.usage.output_tokens == 30 - len("<user>Hi there<assistant>")
    with pytest.raises(anthropic.BadRequestError) as error:
        small.sdk.messages.create(model="fake-chat", max_tokens=10, messages=[{"role": "user", "content": "x" * 40}])
    assert "prompt is too long" in error.value.message and error.value.body["error"]["type"] == "invalid_request_error"


def test_a_prefill_is_continued(server: Server) -> None:
    message = server.sdk.messages.create(model="fake-chat", max_tokens=50, messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure:"}])
    assert message.content[0].text == ANSWER  # the prefill is not repeated
    assert server.prompt() == "<user>Hi<assistant>Sure:"


def test_tool_use_round_trip() -> None:
    server = replying(ONE_CALL)
    message = server.sdk.messages.create(model="fake-chat", max_tokens=200, tools=[TOOL], messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"} and call.id.startswith("toolu_")
    request = server.generator.requests[-1]
    assert request.grammar is not None  # the call is constrained to the tools' schemas
    # The caller runs the tool and sends its result back, as Claude Code does.
    follow = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "sunny, 21 C"}]}, {"type": "text", "text": "Thanks!"}]},
    ]
    server.sdk.messages.create(model="fake-chat", max_tokens=200, tools=[TOOL], messages=follow)
    prompt = server.prompt()
    assert '"city": "Paris"' in prompt and "sunny, 21 C" in prompt and prompt.index("sunny, 21 C") < prompt.index("Thanks!")
    failed = [*follow[:2], {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "no network", "is_error": True}]}]
    server.sdk.messages.create(model="fake-chat", max_tokens=200, tools=[TOOL], messages=failed)
    assert "Error: no network" in server.prompt()


def test_tool_use_streams_input_json_deltas() -> None:
    server = replying(ONE_CALL)
    with server.sdk.messages.stream(model="fake-chat", max_tokens=200, tools=[TOOL], tool_choice={"type": "any"}, messages=[{"role": "user", "content": "Paris?"}]) as stream:
        seen = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}
    deltas = [e.delta.partial_json for e in seen if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len(deltas) > 1 and json.loads("".join(deltas)) == {"city": "Paris"}
    starts = [e for e in seen if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["tool_use"] and starts[0].content_block.name == "get_weather"


def test_tool_choice_forms(server: Server) -> None:
    two = replying(TWO_CALLS)
    both = two.sdk.messages.create(
        model="fake-chat", max_tokens=300, tools=[TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": False}, messages=[{"role": "user", "content": "?"}]
    )
    assert [b.input["city"] for b in both.content] == ["Paris", "Oslo"]
    server.sdk.messages.create(model="fake-chat", max_tokens=20, tools=[TOOL], tool_choice={"type": "none"}, messages=[{"role": "user", "content": "?"}])
    assert server.generator.requests[-1].grammar is None
    named = replying(ONE_CALL)
    named.sdk.messages.create(model="fake-chat", max_tokens=200, tools=[TOOL], tool_choice={"type": "tool", "name": "get_weather"}, messages=[{"role": "user", "content": "?"}])
    assert named.generator.requests[-1].grammar is not None
    with pytest.raises(anthropic.BadRequestError) as error:
        server.sdk.messages.create(model="fake-chat", max_tokens=20, tools=[TOOL], tool_choice={"type": "tool", "name": "other"}, messages=[{"role": "user", "content": "?"}])
    assert "'other'" in error.value.message


def test_structured_output_through_output_config() -> None:
    server = replying('{"city": "Paris"}')
    message = server.sdk.messages.create(
        model="fake-chat", max_tokens=100, messages=[{"role": "user", "content": "?"}], extra_body={"output_config": {"format": {"type": "json_schema", "schema": WEATHER}}}
    )
    assert json.loads(message.content[0].text) == {"city": "Paris"} and server.generator.requests[-1].grammar is not None


def test_count_tokens(server: Server) -> None:
    counted = server.sdk.messages.count_tokens(model="fake-chat", system="S", messages=[{"role": "user", "content": "Hi"}])
    assert counted.input_tokens == len("<system>S<user>Hi<assistant>")
    with_tools = server.sdk.messages.count_tokens(model="fake-chat", tools=[TOOL], messages=[{"role": "user", "content": "Hi"}])
    assert with_tools.input_tokens > counted.input_tokens  # the tools are part of the prompt
    assert server.generator.requests == []  # nothing was generated


@pytest.mark.parametrize(
    "change,param,words",
    [
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}, "messages[0].content[0].type", "text only"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0].type", "document"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking", "extended thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type", "server tools"),
        ({"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}, "mcp_servers", "MCP"),
        ({"max_tokens": -1}, "max_tokens", ""),
        ({"tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"a": {"type": "wat"}}}}]}, "tools[0].input_schema", ""),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "t", "input": {}}]}]}, "messages[0].content[0]", "assistant"),
        ({"messages": [{"role": "user", "content": [{"type": "mystery"}]}]}, "messages[0].content[0].type", ""),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(server: Server, change: dict[str, Any], param: str, words: str) -> None:
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], **change}
    result = server.post(**body)
    assert result.status_code == 400, result.text
    error = result.json
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error" and error["request_id"].startswith("req_")
    assert words in error["error"]["message"]
    assert param.split("[")[0] in error["error"]["message"] or param.split(".")[0] in error["error"]["message"], error
    assert server.generator.requests == []


def test_harmless_fields_are_accepted(server: Server) -> None:
    result = server.post(
        max_tokens=10, messages=[{"role": "user", "content": "Hi"}], thinking={"type": "disabled"}, service_tier="auto",
        cache_control={"type": "ephemeral"}, tools=[{**TOOL, "cache_control": {"type": "ephemeral"}, "type": "custom"}],
    )
    assert result.status_code == 200, result.text


def test_errors_in_anthropic_shape_as_the_sdk_raises_them() -> None:
    server = Server(api_keys=(KEY,))
    assert server.sdk.messages.create(model="fake-chat", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]).content  # x-api-key
    bearer = anthropic.Anthropic(base_url="http://appliance", auth_token=KEY, http_client=server.http, max_retries=0)
    assert bearer.messages.create(model="fake-chat", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]).content
    wrong = anthropic.Anthropic(base_url="http://appliance", api_key="sk-wrong-key-of-some-length", http_client=server.http, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        wrong.messages.create(model="fake-chat", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert denied.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        server.sdk.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert "fake-chat" in missing.value.message and missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        server.sdk.messages.create(model="fake-embed", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])


def test_an_error_mid_stream_is_an_error_event() -> None:
    server = Server(FakeGenerator(context_length=4096, fail_after=2))
    result = server.post(max_tokens=50, messages=[{"role": "user", "content": "Hi"}], stream=True)
    kinds = events(result)
    assert kinds[-1][0] == "error" and kinds[-1][1]["error"]["type"] == "api_error" and "on purpose" in kinds[-1][1]["error"]["message"]
    assert "message_stop" not in [kind for kind, _ in kinds]


def test_keep_alives_are_pings() -> None:
    server = Server(FakeGenerator(context_length=4096, stalls=2))
    kinds = [kind for kind, _ in events(server.post(max_tokens=50, messages=[{"role": "user", "content": "Hi"}], stream=True))]
    assert kinds[:3] == ["message_start", "ping", "ping"]


def test_models_in_anthropic_shape_for_anthropic_clients(server: Server) -> None:
    listed = list(server.sdk.models.list())
    assert [(m.id, m.type) for m in listed] == [("fake-chat", "model")]  # the text models only: /v1/messages takes them
    assert listed[0].display_name == "fake-chat" and listed[0].created_at.year >= 2023
    assert server.sdk.models.retrieve("fake-chat").id == "fake-chat"
    with pytest.raises(anthropic.NotFoundError) as missing:
        server.sdk.models.retrieve("claude-opus-4")
    assert missing.value.body["type"] == "error"
    # Without the header, the same path is OpenAI's.
    assert server.raw.simulate_get("/v1/models").json["object"] == "list"
