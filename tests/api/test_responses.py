"""The Responses API on the HTTP layer, read by the official `openai` SDK over the in-process app.

The fake engine replies with scripted pieces, so these tests check the translation: input
items → the chat prompt, the response object and its typed stream events as the SDK parses
them, the stored conversation behind previous_response_id, and the refusals.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from falcon import testing

from api.app import create_app
from api.response_store import ResponseStore, StoredResponse
from tests.api.conftest import make_context
from tests.api.fakes import REPLY, FakeGenerator
from tests.api.test_structured import ONE_CALL, TWO_CALLS, WEATHER, pieces

ANSWER = "".join(REPLY)
TOOL = {"type": "function", "name": "get_weather", "description": "Weather now", "parameters": WEATHER}


class Server:
    """The app over a fake engine, with the SDK and a raw test client pointed at it."""

    def __init__(self, generator: FakeGenerator | None = None, **settings: Any) -> None:
        self.generator = generator or FakeGenerator(context_length=4096)
        self.ctx = make_context(self.generator, **settings)
        app = create_app(self.ctx)
        self.sdk = openai.OpenAI(base_url="http://appliance/v1", api_key="unused", http_client=httpx.Client(transport=httpx.WSGITransport(app=app)), max_retries=0)
        self.raw = testing.TestClient(app)

    def prompt(self) -> str:
        return self.generator.detokenize(self.generator.requests[-1].prompt_ids)

    def post(self, **body: Any):
        return self.raw.simulate_post("/v1/responses", json={"model": "fake-chat", **body})


@pytest.fixture
def server() -> Server:
    return Server()


def replying(text: str) -> Server:
    return Server(FakeGenerator(context_length=4096, reply=pieces(text)))


def test_a_text_response_as_the_sdk_reads_it(server: Server) -> None:
    response = server.sdk.responses.create(model="fake-chat", input="Hi there", instructions="Be brief", temperature=0.5, metadata={"run": "7"})
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == ANSWER
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_") and message.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == len(REPLY)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.temperature == 0.5 and response.instructions == "Be brief" and response.metadata == {"run": "7"}
    assert response.error is None and response.incomplete_details is None
    assert server.prompt() == "<system>Be brief<user>Hi there<assistant>"


def test_a_stored_response_is_retrieved_listed_and_deleted(server: Server) -> None:
    response = server.sdk.responses.create(model="fake-chat", input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    again = server.sdk.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()
    items = list(server.sdk.responses.input_items.list(response.id))
    assert [(i.type, i.role, i.content[0].text) for i in items] == [("message", "user", "Hi")]
    assert items[0].id.startswith("msg_")
    server.sdk.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        server.sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        server.sdk.responses.delete(response.id)


def test_store_false_keeps_nothing(server: Server) -> None:
    response = server.sdk.responses.create(model="fake-chat", input="Hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        server.sdk.responses.retrieve(response.id)
    result = server.post(input="more", previous_response_id=response.id)
    assert result.status_code == 404 and result.json["error"]["param"] == "previous_response_id"


def test_previous_response_id_continues_the_conversation_without_its_instructions(server: Server) -> None:
    first = server.sdk.responses.create(model="fake-chat", input="Hi", instructions="Old rules")
    second = server.sdk.responses.create(model="fake-chat", input="And then?", previous_response_id=first.id, instructions="New rules")
    assert server.prompt() == f"<system>New rules<user>Hi<assistant>{ANSWER}<user>And then?<assistant>"
    assert second.previous_response_id == first.id
    server.sdk.responses.create(model="fake-chat", input="Third", previous_response_id=second.id)
    assert server.prompt() == f"<user>Hi<assistant>{ANSWER}<user>And then?<assistant>{ANSWER}<user>Third<assistant>"


def test_a_conversation_whose_earlier_turn_expired_cannot_be_continued(server: Server) -> None:
    first = server.sdk.responses.create(model="fake-chat", input="Hi")
    second = server.sdk.responses.create(model="fake-chat", input="Then", previous_response_id=first.id)
    server.sdk.responses.delete(first.id)
    result = server.post(input="more", previous_response_id=second.id)
    assert result.status_code == 404
    assert first.id in result.json["error"]["message"] and "no longer stored" in result.json["error"]["message"]


def test_max_output_tokens_makes_an_incomplete_response(server: Server) -> None:
    response = server.sdk.responses.create(model="fake-chat", input="Hi", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "".join(REPLY[:3]) and response.output[0].status == "incomplete"
    assert server.generator.requests[-1].max_tokens == 3


def test_a_streamed_response_as_the_sdk_reads_it(server: Server) -> None:
    events = list(server.sdk.responses.create(model="fake-chat", input="Hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * len(REPLY),
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    final = events[-1].response
    assert final.output_text == ANSWER and final.usage.output_tokens == len(REPLY)
    assert server.sdk.responses.retrieve(final.id).output_text == ANSWER  # stored before the last event


def test_the_sdk_stream_helper_accumulates_the_same_response(server: Server) -> None:
    with server.sdk.responses.stream(model="fake-chat", input="Hi") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == ANSWER


def test_sse_frames_name_their_event_type(server: Server) -> None:
    result = server.post(input="Hi", stream=True)
    frames = [f for f in result.text.split("\n\n") if f.strip()]
    for frame in frames:
        event, data = frame.split("\n")
        assert event == "event: " + json.loads(data[len("data: "):])["type"]
    assert "[DONE]" not in result.text


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(server: Server) -> None:
    events = list(server.sdk.responses.create(model="fake-chat", input="Hi", stream=True, max_output_tokens=2))
    assert events[-1].type == "response.incomplete" and events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_a_failing_generation_ends_the_stream_with_error_and_failed() -> None:
    server = Server(FakeGenerator(context_length=4096, fail_after=2))
    events = list(server.sdk.responses.create(model="fake-chat", input="Hi", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert "failed on purpose" in events[-2].message and events[-1].response.status == "failed"
    assert events[-1].response.error.message == events[-2].message


def test_logprobs_come_with_the_text(server: Server) -> None:
    response = server.sdk.responses.create(model="fake-chat", input="Hi", top_logprobs=1, include=["message.output_text.logprobs"])
    logprobs = response.output[0].content[0].logprobs
    assert [lp.token for lp in logprobs] == list(REPLY) and all(len(lp.top_logprobs) == 1 for lp in logprobs)


def test_text_format_json_schema_constrains_the_output() -> None:
    server = replying('{"city": "Paris"}')
    response = server.sdk.responses.create(
        model="fake-chat", input="Where?", text={"format": {"type": "json_schema", "name": "place", "schema": {**WEATHER, "additionalProperties": False}, "strict": True}}
    )
    assert json.loads(response.output_text) == {"city": "Paris"}
    grammar = server.generator.requests[-1].grammar
    assert grammar is not None and json.loads(grammar.source)["properties"] == WEATHER["properties"]
    assert response.text.format.type == "json_schema" and response.text.format.name == "place"


def test_a_function_call_item_and_its_output_in_the_next_turn() -> None:
    server = replying(ONE_CALL)
    response = server.sdk.responses.create(model="fake-chat", input="Weather in Paris?", tools=[TOOL], tool_choice="required")
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
    assert response.tools[0].name == "get_weather" and response.tool_choice == "required"
    server.sdk.responses.create(
        model="fake-chat", previous_response_id=response.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}],
    )
    prompt = server.prompt()
    assert "get_weather" in prompt and '{"sky": "clear"}' in prompt and "Weather in Paris?" in prompt


def test_streamed_function_calls_as_the_sdk_reads_them() -> None:
    server = replying(TWO_CALLS)
    events = list(server.sdk.responses.create(model="fake-chat", input="Weather?", tools=[TOOL], parallel_tool_calls=True, stream=True))
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [i.type for i in added] == ["function_call", "function_call"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [json.loads(e.arguments) for e in done] == [{"city": "Paris"}, {"city": "Oslo"}]
    for event in done:
        fragments = [e.delta for e in events if e.type == "response.function_call_arguments.delta" and e.item_id == event.item_id]
        assert "".join(fragments) == event.arguments
    final = events[-1].response
    assert [o.type for o in final.output] == ["function_call", "function_call"]
    assert len({o.call_id for o in final.output}) == 2


def test_function_calls_given_as_input_items_are_history() -> None:
    server = replying("Sunny.")
    server.sdk.responses.create(model="fake-chat", tools=[TOOL], input=[
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "clear"},
    ])
    prompt = server.prompt()
    assert prompt.index("Weather?") < prompt.index('"city": "Paris"') < prompt.index("clear")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, "input[0].content[0].type"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"content": "no role"}]}, "input[0].role"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"max_tool_calls": 3}, "max_tool_calls"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": WEATHER, "strict": True}}}, "text.format.schema"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
        ({"top_logprobs": 50}, "top_logprobs"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(server: Server, body: dict, param: str) -> None:
    result = server.post(**{"input": "Hi", **body})
    assert result.status_code == 400, result.text
    assert result.json["error"]["param"] == param, result.json


def test_harmless_values_are_accepted(server: Server) -> None:
    result = server.post(input="Hi", background=False, reasoning={"effort": None}, service_tier="auto", truncation="disabled", include=["message.output_text.logprobs"])
    assert result.status_code == 200, result.text


def test_a_prompt_too_long_for_the_context_is_blamed_on_input() -> None:
    server = Server(FakeGenerator(context_length=64))
    result = server.post(input="x" * 200)
    assert result.status_code == 400 and result.json["error"]["param"] == "input"


def test_truncation_auto_drops_the_oldest_tokens_instead() -> None:
    server = Server(FakeGenerator(context_length=64))
    result = server.post(input="x" * 200, truncation="auto", max_output_tokens=8)
    assert result.status_code == 200, result.text
    assert server.generator.requests[-1].context_policy == "truncate"
    assert result.json["usage"]["input_tokens"] == 64 - 8


def test_input_item_pages(server: Server) -> None:
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    response = server.sdk.responses.create(model="fake-chat", input=items)
    page = server.raw.simulate_get(f"/v1/responses/{response.id}/input_items", params={"limit": 2, "order": "asc"}).json
    assert [i["content"][0]["text"] for i in page["data"]] == ["m0", "m1"] and page["has_more"] is True
    rest = server.raw.simulate_get(f"/v1/responses/{response.id}/input_items", params={"limit": 10, "order": "asc", "after": page["last_id"]}).json
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"] and rest["has_more"] is False
    newest = [i.content[0].text for i in server.sdk.responses.input_items.list(response.id)]
    assert newest == ["m4", "m3", "m2", "m1", "m0"]


# -- the store's bounds ----------------------------------------------------------------------


def _record(response_id: str, created: float, previous: str | None = None, size: int = 10) -> StoredResponse:
    return StoredResponse(response_id, created, previous, {"id": response_id, "pad": "x" * size}, [], [{"role": "user", "content": response_id}])


def test_the_store_keeps_the_newest_records_within_its_count() -> None:
    store = ResponseStore(max_records=3, clock=lambda: 100.0)
    for i in range(5):
        store.put(_record(f"r{i}", 90.0 + i))
    assert [store.get(f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_the_store_drops_expired_records() -> None:
    now = [100.0]
    store = ResponseStore(ttl_s=10, clock=lambda: now[0])
    store.put(_record("old", 95.0))
    assert store.get("old") is not None
    now[0] = 106.0
    assert store.get("old") is None  # expired: not returned even before a write evicts it
    store.put(_record("new", 106.0))
    assert store.get("new") is not None


def test_the_store_keeps_within_its_bytes() -> None:
    store = ResponseStore(max_bytes=3000, clock=lambda: 100.0)
    for i in range(4):
        store.put(_record(f"r{i}", 90.0 + i, size=1000))
    assert [store.get(f"r{i}") is not None for i in range(4)] == [False, False, True, True]


def test_a_chain_is_rebuilt_oldest_first_and_bounded(tmp_path) -> None:
    store = ResponseStore(tmp_path / "responses.sqlite", clock=lambda: 100.0)
    store.put(_record("a", 90.0))
    store.put(_record("b", 91.0, "a"))
    store.put(_record("c", 92.0, "b"))
    assert [t.id for t in store.chain("c", limit=10)] == ["a", "b", "c"]
    with pytest.raises(ValueError):
        store.chain("c", limit=2)
    other = ResponseStore(tmp_path / "responses.sqlite", clock=lambda: 100.0)  # another worker's view of the same file
    assert other.get("b") is not None and other.delete("a")
    with pytest.raises(LookupError) as missing:
        store.chain("c", limit=10)
    assert missing.value.args[0] == "a"


def test_a_store_of_zero_records_stores_nothing() -> None:
    store = ResponseStore(max_records=0)
    store.put(_record("a", 1.0))
    assert store.get("a") is None


def test_the_sdk_parse_helper_reads_a_schema_constrained_answer() -> None:
    from pydantic import BaseModel

    class Place(BaseModel):
        city: str

    server = replying('{"city": "Paris"}')
    parsed = server.sdk.responses.parse(model="fake-chat", input="Where?", text_format=Place)
    assert parsed.output_parsed == Place(city="Paris")
    grammar = server.generator.requests[-1].grammar
    assert grammar is not None and json.loads(grammar.source)["required"] == ["city"]
