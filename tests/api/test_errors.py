"""Each failure gets its documented status and error body, in the dialect of its route."""

from __future__ import annotations

import json
import threading

import pytest

from api.app import create_app
from api.models.registry import ModelRegistry
from tests.api.conftest import make_context

CHAT = [{"role": "user", "content": "Hi"}]
OPENAI_KEYS = {"message", "type", "param", "code"}


def openai_error(result, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/json"
    error = result.json["error"]
    assert set(error) == OPENAI_KEYS and isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def ollama_error(result, status: int) -> str:
    assert result.status_code == status, result.text
    assert set(result.json) == {"error"} and isinstance(result.json["error"], str) and result.json["error"]
    return result.json["error"]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize"])
@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_openai_bad_json(client, route: str, body: bytes) -> None:
    openai_error(client.simulate_post(route, body=body, headers={"content-type": "application/json"}), 400, "invalid_request_error")


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show"])
@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]"])
def test_ollama_bad_json(client, route: str, body: bytes) -> None:
    ollama_error(client.simulate_post(route, body=body), 400)


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("temperature", "hot", "temperature"),
        ("max_tokens", 1.5, "max_tokens"),
        ("n", True, "n"),
        ("stream", "yes", "stream"),
        ("stop", [1, 2], "stop[0]"),
        ("logit_bias", {"x": 1}, "logit_bias"),
        ("logit_bias", {"5": "high"}, "logit_bias.5"),
        ("seed", "1", "seed"),
        ("stream_options", {"include_usage": 1}, "stream_options.include_usage"),
        ("messages", "Hi", "messages"),
        ("messages", [{"role": "wizard", "content": "x"}], "messages[0].role"),
        ("top_logprobs", 30, "top_logprobs"),
        ("n", 0, "n"),
        ("temperature", -1, "temperature"),
        ("top_p", 0, "top_p"),
        ("presence_penalty", 3, "presence_penalty"),
    ],
)
def test_openai_wrong_types_and_ranges(client, field: str, value, param: str) -> None:
    body = {"model": "fake-chat", "messages": CHAT, field: value}
    openai_error(client.simulate_post("/v1/chat/completions", json=body), 400, param=param)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "fake-chat", "prompt": "x", "options": {"temperature": "hot"}}, "options.temperature"),
        ({"model": "fake-chat", "prompt": "x", "options": {"num_predict": "ten"}}, "options.num_predict"),
        ({"model": "fake-chat", "prompt": "x", "options": "hot"}, "options"),
        ({"model": "fake-chat", "prompt": 5}, "prompt"),
        ({"model": "fake-chat", "prompt": "x", "stream": "no"}, "stream"),
        ({"model": 3, "prompt": "x"}, "model"),
    ],
)
def test_ollama_wrong_types(client, body: dict, param: str) -> None:
    message = ollama_error(client.simulate_post("/api/generate", json=body), 400)
    assert param.split(".")[-1] in message


def test_missing_model(client) -> None:
    openai_error(client.simulate_post("/v1/chat/completions", json={"messages": CHAT}), 400, param="model")
    ollama_error(client.simulate_post("/api/chat", json={"messages": CHAT}), 400)


def test_unknown_model(client) -> None:
    error = openai_error(client.simulate_post("/v1/chat/completions", json={"model": "gpt-4o", "messages": CHAT}), 404, "model_not_found", "model")
    assert "gpt-4o" in error["message"] and "fake-chat" in error["message"]
    openai_error(client.simulate_get("/v1/models/gpt-4o"), 404, "model_not_found")
    openai_error(client.simulate_post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "model_not_found")
    for route, body in [("/api/generate", {"prompt": "x"}), ("/api/chat", {"messages": CHAT}), ("/api/embed", {"input": "x"}), ("/api/show", {})]:
        assert "not found" in ollama_error(client.simulate_post(route, json={"model": "llama3", **body}), 404)


def test_wrong_kind_of_model(client) -> None:
    error = openai_error(client.simulate_post("/v1/embeddings", json={"model": "fake-chat", "input": "x"}), 400, param="model")
    assert "fake-embed" in error["message"]
    ollama_error(client.simulate_post("/api/chat", json={"model": "fake-embed", "messages": CHAT}), 400)


def test_prompt_too_long(client) -> None:
    long_chat = [{"role": "user", "content": "x" * 100}]
    openai_error(client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": long_chat}), 400, "context_length_exceeded", "messages")
    openai_error(client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "x" * 100}), 400, "context_length_exceeded", "prompt")
    openai_error(client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "x", "max_tokens": 100}), 400, "context_length_exceeded")
    openai_error(client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": "x" * 20}), 400, "context_length_exceeded")
    # Ollama cuts an over-long prompt, as Ollama does, unless asked not to.
    ok = client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": long_chat, "stream": False})
    assert ok.status_code == 200 and ok.json["prompt_eval_count"] < 64
    assert "context" in ollama_error(client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": long_chat, "truncate": False}), 400)


def test_truncation_on_request(client) -> None:
    body = {"model": "fake-chat", "prompt": "x" * 100, "max_tokens": 4, "context_length_exceeded_behavior": "truncate"}
    result = client.simulate_post("/v1/completions", json=body)
    assert result.status_code == 200 and result.json["usage"]["prompt_tokens"] == 60
    openai_error(client.simulate_post("/v1/completions", json={**body, "context_length_exceeded_behavior": "drop"}), 400, param="context_length_exceeded_behavior")


def test_body_too_large(make_client) -> None:
    client = make_client(max_body_bytes=1000)
    big = json.dumps({"model": "fake-chat", "prompt": "x" * 2000})
    openai_error(client.simulate_post("/v1/completions", body=big), 413, "request_too_large")
    ollama_error(client.simulate_post("/api/generate", body=big), 413)


def test_unknown_route_and_method(client) -> None:
    openai_error(client.simulate_get("/v1/nothing"), 404)
    ollama_error(client.simulate_get("/api/nothing"), 404)
    error = openai_error(client.simulate_get("/v1/chat/completions"), 405)
    assert "GET" in error["message"]


def test_not_supported_yet(client) -> None:
    # The fake has no fill-in-the-middle tokens.
    openai_error(client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "x", "suffix": "y"}), 400, "unsupported_parameter", param="suffix")
    for body in ({"think": True}, {"images": ["aGk="]}, {"template": "{{ .Prompt }}"}):
        assert "not supported" in ollama_error(client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "x", **body}), 400)
    # Accepted and ignored: no tools, tool_choice none, keep_alive, user.
    ok = {"model": "fake-chat", "messages": CHAT, "tools": [], "tool_choice": "none", "user": "u1", "response_format": {"type": "text"}}
    assert client.simulate_post("/v1/chat/completions", json=ok).status_code == 200
    assert client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": CHAT, "keep_alive": "5m", "stream": False}).status_code == 200


def test_engine_error_before_streaming_is_a_500(make_client) -> None:
    from tests.api.fakes import FakeGenerator

    client = make_client(FakeGenerator(fail_after=0))
    error = openai_error(client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT}), 500)
    assert error["type"] == "server_error" and "failed on purpose" in error["message"]
    assert "failed on purpose" in ollama_error(client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": CHAT, "stream": False}), 500)


def test_loading_failed_and_draining_answer_503() -> None:
    import falcon.testing

    release = threading.Event()
    registry = ModelRegistry()
    registry.load_in_background(lambda: release.wait(10) and [])
    ctx = make_context(registry=registry)
    client = falcon.testing.TestClient(create_app(ctx))
    health = client.simulate_get("/health")
    assert health.status_code == 503 and health.json["status"] == "loading" and health.headers["retry-after"]
    openai_error(client.simulate_post("/v1/chat/completions", json={"model": "x", "messages": CHAT}), 503, "service_unavailable")
    ollama_error(client.simulate_get("/api/tags"), 503)
    release.set()
    registry.wait(10)
    assert client.simulate_get("/health").status_code == 200

    failed = ModelRegistry()
    failed.load_in_background(lambda: (_ for _ in ()).throw(FileNotFoundError("no engines in /nowhere")))
    failed.wait(10)
    client = falcon.testing.TestClient(create_app(make_context(registry=failed)))
    health = client.simulate_get("/health")
    assert health.status_code == 503 and health.json["status"] == "failed" and "/nowhere" in health.json["reason"]
    assert "/nowhere" in openai_error(client.simulate_get("/v1/models"), 503)["message"]

    ctx = make_context()
    client = falcon.testing.TestClient(create_app(ctx))
    ctx.draining = True
    assert client.simulate_get("/health").json["status"] == "draining"
    result = client.simulate_get("/v1/models")
    openai_error(result, 503)
    assert result.headers["retry-after"]
