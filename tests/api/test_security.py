"""API keys, CORS, request limits and stream keep-alives, on the app over fake engines."""

from __future__ import annotations

import json

import pytest

from api.app import routes
from api.auth import ApiKeyError, ApiKeys, exposure_problem, load_api_keys, read_key_file
from api.settings import ServerSettings
from api.ui import page as ui
from tests.api.conftest import make_context
from tests.api.fakes import FakeGenerator
from tests.api.test_errors import ollama_error, openai_error

KEY = "sk-appliance-test-key-0001"
OTHER = "sk-appliance-test-key-0002"
CHAT = [{"role": "user", "content": "Hi"}]

# One request per route, as a client would send it (the path's parameters filled in).
REQUESTS = [
    ("POST", "/v1/chat/completions", {"model": "fake-chat", "messages": CHAT}),
    ("POST", "/v1/completions", {"model": "fake-chat", "prompt": "Hi"}),
    ("POST", "/v1/embeddings", {"model": "fake-embed", "input": "Hi"}),
    ("POST", "/v1/rerank", {"model": "fake-embed", "query": "Hi", "documents": ["Hi"]}),
    ("POST", "/v2/rerank", {"model": "fake-embed", "query": "Hi", "documents": ["Hi"]}),
    ("POST", "/rerank", {"model": "fake-embed", "query": "Hi", "documents": ["Hi"]}),
    ("POST", "/v1/responses", {"model": "fake-chat", "input": "Hi"}),
    ("POST", "/v1/messages", {"model": "fake-chat", "max_tokens": 5, "messages": CHAT}),
    ("POST", "/v1/messages/count_tokens", {"model": "fake-chat", "messages": CHAT}),
    ("GET", "/v1/responses/resp_unknown", None),
    ("DELETE", "/v1/responses/resp_unknown", None),
    ("GET", "/v1/responses/resp_unknown/input_items", None),
    ("POST", "/v1/files", {"purpose": "batch"}),
    ("GET", "/v1/files", None),
    ("GET", "/v1/files/file-unknown", None),
    ("DELETE", "/v1/files/file-unknown", None),
    ("GET", "/v1/files/file-unknown/content", None),
    ("POST", "/v1/batches", {"input_file_id": "file-unknown", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    ("GET", "/v1/batches", None),
    ("GET", "/v1/batches/batch_unknown", None),
    ("POST", "/v1/batches/batch_unknown/cancel", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/fake-chat", None),
    ("POST", "/api/generate", {"model": "fake-chat", "prompt": "Hi", "stream": False}),
    ("POST", "/api/chat", {"model": "fake-chat", "messages": CHAT, "stream": False}),
    ("POST", "/api/embed", {"model": "fake-embed", "input": "Hi"}),
    ("POST", "/api/embeddings", {"model": "fake-embed", "prompt": "Hi"}),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", {"model": "fake-chat"}),
    ("GET", "/api/ps", None),
    ("POST", "/api/pull", {"model": "fake-chat"}),
    ("DELETE", "/api/delete", {"model": "fake-chat"}),
    ("POST", "/api/copy", {"source": "fake-chat", "destination": "copied"}),
    ("GET", "/api/version", None),
    ("POST", "/tokenize", {"model": "fake-chat", "content": "Hi"}),
    ("POST", "/detokenize", {"model": "fake-chat", "tokens": [104]}),
    ("POST", "/extras/tokenize", {"model": "fake-chat", "content": "Hi"}),
    ("POST", "/extras/tokenize/count", {"model": "fake-chat", "content": "Hi"}),
    ("POST", "/extras/detokenize", {"model": "fake-chat", "tokens": [104]}),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/", None),
]


# With a key, the answer when not 200: these fakes have no engines folder for delete and copy to change
# (tests/api/test_lifecycle.py has them with one).
# The fakes serve no reranker, so the rerank routes answer 400 naming the rerankers (none; tests/api/test_rerank.py has them).
# (by method and path, or path) The files and batches named here do not exist (tests/api/test_batches.py has real ones); an upload must be multipart.
WITH_KEY_BATCHES = {("POST", "/v1/files"): 400, "/v1/files/file-unknown": 404, "/v1/files/file-unknown/content": 404, ("POST", "/v1/batches"): 404, "/v1/batches/batch_unknown": 404, "/v1/batches/batch_unknown/cancel": 404}
WITH_KEY = {"/v1/rerank": 400, "/v2/rerank": 400, "/rerank": 400, "/api/delete": 400, "/api/copy": 400, "/v1/responses/resp_unknown": 404, "/v1/responses/resp_unknown/input_items": 404, **WITH_KEY_BATCHES}


def send(client, method: str, path: str, body, headers=None):
    return client.simulate_request(method, path, json=body, headers=headers or {})


def test_every_route_but_health_is_listed_here() -> None:
    # The chat page's files need no key either (tests/api/test_ui.py).
    listed = {path for _, path, _ in REQUESTS}
    served = {
        path.replace("{model_id}", "fake-chat").replace("{response_id}", "resp_unknown").replace("{file_id}", "file-unknown").replace("{batch_id}", "batch_unknown")
        for path, _ in routes(make_context())
    }
    assert served - listed == {"/health", *ui.PUBLIC_PATHS}


@pytest.mark.parametrize("method,path,body", REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
def test_every_route_needs_the_key(make_client, method: str, path: str, body) -> None:
    client = make_client(FakeGenerator(), api_keys=(KEY, OTHER))
    for headers in ({}, {"Authorization": "Bearer wrong-key-of-some-length"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        result = send(client, method, path, body, headers)
        assert result.status_code == 401, (headers, result.text)
        assert result.headers["www-authenticate"].startswith('Bearer realm="appliance"')
        if path.startswith("/api/"):
            ollama_error(result, 401)
        elif path.startswith("/v1/messages"):
            assert result.json["type"] == "error" and result.json["error"]["type"] == "authentication_error"
        else:
            assert openai_error(result, 401)["type"] == "invalid_request_error"
    for key in (KEY, OTHER):
        result = send(client, method, path, body, {"Authorization": f"Bearer {key}"})
        assert result.status_code == WITH_KEY.get((method, path), WITH_KEY.get(path, 200)), result.text
        # Anthropic's clients send the key as x-api-key; every route takes it.
        assert send(client, method, path, body, {"X-Api-Key": key}).status_code == WITH_KEY.get((method, path), WITH_KEY.get(path, 200))
    assert send(client, method, path, body, {"X-Api-Key": "wrong-key-of-some-length"}).status_code == 401
    # A wrong key is refused even beside a right one: it is never passed over.
    assert send(client, method, path, body, {"Authorization": f"Bearer {KEY}", "X-Api-Key": "wrong-key-of-some-length"}).status_code == 401
    assert send(client, method, path, body, {"Authorization": "Bearer wrong-key-of-some-length", "X-Api-Key": KEY}).status_code == 401


def test_health_needs_no_key(make_client) -> None:
    client = make_client(FakeGenerator(), api_keys=(KEY,))
    assert client.simulate_get("/health").status_code == 200
    assert client.simulate_head("/health").status_code == 200
    assert client.simulate_get("/health/").status_code == 200


def test_unknown_routes_are_401_before_404(make_client) -> None:
    client = make_client(FakeGenerator(), api_keys=(KEY,))
    openai_error(client.simulate_get("/v1/secret-route"), 401)
    openai_error(client.simulate_get("/v1/secret-route", headers={"Authorization": f"Bearer {KEY}"}), 404)


def test_error_codes_say_what_was_wrong(make_client) -> None:
    client = make_client(FakeGenerator(), api_keys=(KEY,))
    missing = openai_error(client.simulate_get("/v1/models"), 401)
    assert missing["code"] is None and "Authorization: Bearer" in missing["message"]
    wrong = client.simulate_get("/v1/models", headers={"Authorization": "Bearer sk-not-the-right-key-at-all"})
    assert openai_error(wrong, 401, "invalid_api_key")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert "sk-not-the-right" not in wrong.text  # the presented key is not echoed


def test_keys_are_compared_by_digest_against_all() -> None:
    keys = ApiKeys([KEY, OTHER])
    assert keys.accepts(KEY) and keys.accepts(OTHER)
    assert not keys.accepts(KEY[:-1]) and not keys.accepts(KEY + "x") and not keys.accepts("") and not keys.accepts("é" * 30)
    assert not ApiKeys().enabled
    ApiKeys().check(None)  # no keys: authentication off


def test_every_key_is_compared_whatever_matches(monkeypatch) -> None:
    # Constant time: equal-length digests, and no early exit at the first match or mismatch.
    import hmac

    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = ApiKeys([f"sk-appliance-key-{i:08d}" for i in range(5)])
    for token in ("sk-appliance-key-00000000", "sk-appliance-key-00000004", "x", "sk-appliance-key-0000000"):
        calls.clear()
        keys.accepts(token)
        assert calls == [(32, 32)] * 5


def test_key_files_and_environment(tmp_path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# team keys\n\n{KEY}\n  {OTHER}  \n")
    assert read_key_file(path) == [KEY, OTHER]
    settings = ServerSettings.from_env({"APPLIANCE_API_KEYS": f"{KEY}, sk-third-key-of-enough-length", "APPLIANCE_API_KEY_FILES": str(path)})
    assert settings.api_keys == (KEY, "sk-third-key-of-enough-length")
    keys = load_api_keys(settings)
    assert len(keys) == 3 and keys.accepts(OTHER)
    assert ServerSettings.from_env(settings.to_env()) == settings  # round trip to the workers
    for bad, message in (("short", "at least 16"), ("has a space in the middle", "without spaces"), ("ключ-ключ-ключ-ключ", "ASCII")):
        with pytest.raises(ApiKeyError, match=message):
            load_api_keys(ServerSettings(api_keys=(bad,)))
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ApiKeyError, match="holds no key"):
        read_key_file(empty)
    with pytest.raises(ApiKeyError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_open_server_only_on_loopback() -> None:
    none = ApiKeys()
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2", "[::1]"):
        assert exposure_problem(ServerSettings(host=host), none) is None
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        problem = exposure_problem(ServerSettings(host=host), none)
        assert problem and "--api-key-file" in problem and "--insecure-no-auth" in problem
        assert exposure_problem(ServerSettings(host=host, insecure_no_auth=True), none) is None
        assert exposure_problem(ServerSettings(host=host), ApiKeys([KEY])) is None


def test_openapi_declares_the_key_requirement(make_client) -> None:
    open_doc = make_client(FakeGenerator()).simulate_get("/openapi.json").json
    assert "security" not in open_doc and open_doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    client = make_client(FakeGenerator(), api_keys=(KEY,))
    doc = client.simulate_get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json
    assert doc["security"] == [{"apiKey": []}, {"anthropicKey": []}]  # Bearer, or Anthropic's x-api-key
    assert doc["components"]["securitySchemes"]["anthropicKey"] == {**doc["components"]["securitySchemes"]["anthropicKey"], "in": "header", "name": "x-api-key"}
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "401" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]


# -- CORS -------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}


def test_no_cross_origin_access_by_default(make_client) -> None:
    client = make_client(FakeGenerator(), api_keys=(KEY,))
    result = client.simulate_options("/v1/chat/completions", headers=PREFLIGHT)
    assert "https://app.example" in openai_error(result, 403, "forbidden")["message"]
    assert "access-control-allow-origin" not in result.headers
    plain = client.simulate_get("/v1/models", headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEY}"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_allowed_origin_preflight_and_answers(make_client) -> None:
    client = make_client(FakeGenerator(), api_keys=(KEY,), cors_origins=("https://app.example", "http://localhost:3000"))
    result = client.simulate_options("/v1/chat/completions", headers=PREFLIGHT)  # no key: browsers send none
    assert result.status_code == 204
    assert result.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in result.headers["access-control-allow-methods"]
    assert result.headers["access-control-allow-headers"] == "authorization, content-type"
    assert int(result.headers["access-control-max-age"]) > 0
    ollama = client.simulate_options("/api/chat", headers={**PREFLIGHT, "Origin": "http://localhost:3000"})
    assert ollama.status_code == 204 and ollama.headers["access-control-allow-origin"] == "http://localhost:3000"
    # Answers carry the header, errors too, so that a page can read a 401 or a 429.
    denied = client.simulate_get("/v1/models", headers={"Origin": "https://app.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"
    assert "Retry-After" in denied.headers["access-control-expose-headers"]
    assert "origin" in denied.headers["vary"].lower()
    body = {"model": "fake-chat", "messages": CHAT, "stream": True}
    stream = client.simulate_post("/v1/chat/completions", json=body, headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEY}"})
    assert stream.status_code == 200 and stream.headers["access-control-allow-origin"] == "https://app.example"
    other = client.simulate_options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_any_origin(make_client) -> None:
    client = make_client(FakeGenerator(), cors_origins=("*",))
    assert client.simulate_options("/v1/embeddings", headers={**PREFLIGHT, "Origin": "https://x.example"}).status_code == 204
    result = client.simulate_get("/v1/models", headers={"Origin": "https://x.example"})
    assert result.headers["access-control-allow-origin"] == "*"


# -- limits -----------------------------------------------------------------------------------


def test_message_and_choice_limits(make_client) -> None:
    client = make_client(FakeGenerator(context_length=4096), max_messages=3, max_n=2, max_inputs=2)
    four = CHAT * 4
    openai_error(client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": four}), 400, param="messages")
    assert "at most 3" in ollama_error(client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": four, "stream": False}), 400)
    assert client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT * 3}).status_code == 200
    openai_error(client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "n": 3}), 400, param="n")
    openai_error(client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "b", "c"]}), 400, param="input")
    openai_error(client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": ["a", "b", "c"]}), 400, param="prompt")
    assert "at most 2" in ollama_error(client.simulate_post("/api/embed", json={"model": "fake-embed", "input": ["a", "b", "c"]}), 400)


# An upload is bounded by --files-max-bytes (tests/api/test_batches.py); a cancel reads no body.
OWN_BODY_LIMITS = {"/v1/files", "/v1/batches/batch_unknown/cancel"}


def test_body_limit_applies_to_every_post_route(make_client) -> None:
    client = make_client(FakeGenerator(), max_body_bytes=512)
    big = {"model": "fake-chat", "prompt": "x" * 600, "content": "x" * 600}
    for method, path, _ in REQUESTS:
        if method == "POST" and path not in OWN_BODY_LIMITS:
            result = send(client, method, path, big)
            if path.startswith("/v1/messages"):
                assert result.status_code == 413 and result.json["error"]["type"] == "request_too_large", result.text
            else:
                (ollama_error if path.startswith("/api/") else openai_error)(result, 413)


def test_stream_keep_alives_while_waiting(make_client) -> None:
    client = make_client(FakeGenerator(stalls=3), stream_keepalive_s=0.01)
    chat = client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "stream": True})
    assert chat.text.count(": keep-alive\n\n") == 3 and chat.text.endswith("data: [DONE]\n\n")
    completion = client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Hi", "stream": True})
    assert completion.text.count(": keep-alive\n\n") == 3
    # NDJSON has no comment line: a space, JSON whitespace before the next line, which parsers skip.
    ollama = client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": CHAT})
    assert ollama.status_code == 200 and ollama.text.startswith("   {")
    assert all(json.loads(line) for line in ollama.text.splitlines())
    # Answers that are not streamed never see them.
    whole = client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT})
    assert whole.json["choices"][0]["message"]["content"]


def test_queue_timeout_and_request_timeout_errors_have_their_status(make_client) -> None:
    from runtime.errors import QueueTimeoutError, RequestTimeoutError

    class Slow(FakeGenerator):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

        def generate(self, request, heartbeat_s=None, fitted=None):
            self.prepare(request)
            raise self.error

    busy = make_client(Slow(QueueTimeoutError("waited too long")))
    result = busy.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT})
    openai_error(result, 503, "server_busy")
    assert result.headers["retry-after"]
    slow = make_client(Slow(RequestTimeoutError("ran too long")))
    assert openai_error(slow.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT}), 504, "timeout")["type"] == "timeout"
    assert "ran too long" in ollama_error(slow.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "x", "stream": False}), 504)
