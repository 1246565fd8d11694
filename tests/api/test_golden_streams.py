"""Golden byte transcripts pin the wire formats exactly: SSE (OpenAI) and NDJSON (Ollama).

Each case sends one request to the app over fake engines (fixed clock, ids and durations)
and compares the whole response body with tests/api/golden/<case>.txt, byte for byte.
After a deliberate change of format, regenerate with UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.api.fakes import FakeGenerator

GOLDEN = Path(__file__).parent / "golden"
CHAT = [{"role": "user", "content": "Hi"}]

CASES = {
    # name: (route, body, fake generator options)
    "openai_chat_stream_usage": ("/v1/chat/completions", {"model": "fake-chat", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 5}, {}),
    "openai_chat_stream_n2_stop_logprobs": (
        "/v1/chat/completions",
        {"model": "fake-chat", "messages": CHAT, "stream": True, "n": 2, "stop": ["va"], "logprobs": True, "top_logprobs": 1, "seed": 7},
        {},
    ),
    "openai_chat_stream_error": ("/v1/chat/completions", {"model": "fake-chat", "messages": CHAT, "stream": True}, {"fail_after": 2}),
    "openai_chat_json": ("/v1/chat/completions", {"model": "fake-chat", "messages": CHAT, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}, {}),
    "openai_completion_stream_echo": ("/v1/completions", {"model": "fake-chat", "prompt": "Say", "stream": True, "echo": True, "max_tokens": 3}, {}),
    "openai_completion_json_logprobs": ("/v1/completions", {"model": "fake-chat", "prompt": [[300, 301], [302]], "max_tokens": 2, "logprobs": 1}, {}),
    "ollama_generate_stream": ("/api/generate", {"model": "fake-chat", "prompt": "Hi", "options": {"num_predict": 4}}, {}),
    "ollama_chat_stream": ("/api/chat", {"model": "fake-chat:latest", "messages": CHAT}, {}),
    "ollama_chat_stream_error": ("/api/chat", {"model": "fake-chat", "messages": CHAT}, {"fail_after": 3}),
    "ollama_generate_json": ("/api/generate", {"model": "fake-chat", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}, {}),
    "ollama_chat_load": ("/api/chat", {"model": "fake-chat", "messages": []}, {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_transcript(make_client, name: str) -> None:
    route, body, options = CASES[name]
    result = make_client(FakeGenerator(**options)).simulate_post(route, json=body)
    assert result.status_code == 200, result.text
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_bytes(result.content)
    assert result.content == path.read_bytes(), f"{name}: the wire format changed; diff against {path}"


def test_stream_content_types(client) -> None:
    sse = client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "stream": True})
    assert sse.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert sse.headers["cache-control"] == "no-cache"
    ndjson = client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": CHAT})
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    assert "content-length" not in {k.lower() for k in ndjson.headers}


def test_sse_frames_share_id_and_created(client) -> None:
    import json

    result = client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "stream": True, "n": 2})
    frames = [f for f in result.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {("chatcmpl-0001", 1750000000, "fake-chat", "chat.completion.chunk")}
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["finish_reason"] == "stop" and all(c["finish_reason"] is None for c in mine[:-1])
        assert "".join(c["delta"].get("content", "") for c in mine) == "Hello, world – ça va?"


def test_closing_a_stream_closes_the_generation(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    result = client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi"})
    assert result.status_code == 200 and generator.closed == 1
