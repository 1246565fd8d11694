"""Fuzzing the whole HTTP surface on real (tiny) engines, in process.

- schemathesis reads our /openapi.json and sends every operation valid and invalid requests
  (plus its fixed coverage cases, and requests without the key): no 5xx, every status
  documented, every body — SSE events included — conforming to its schema, right content
  types, and authentication never ignored.
- hypothesis sends random bytes, random JSON and random Unicode text to every POST route:
  no 5xx, and every error in the dialect of its route.

The server runs with small limits (max_tokens 8, n 2) so that valid generations stay cheap.
"""

from __future__ import annotations

import json

import falcon.testing
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app, routes
from api.auth import load_api_keys
from api.context import ServerContext
from api.models.loader import load_models
from api.models.registry import ModelRegistry
from api.openapi import openapi_document
from api.settings import ServerSettings
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION
from runtime.settings import RuntimeSettings

pytestmark = pytest.mark.integration
KEY = "sk-appliance-fuzzing-key-000001"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = ServerSettings(api_keys=(KEY,), max_tokens=8, max_n=2, max_inputs=8, max_messages=16, request_timeout_s=60)
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance, ignored_auth]


@pytest.fixture(scope="module")
def fuzz_app(tiny_llama_engine, tiny_encoder_dir, tmp_path_factory):
    from export.options import ExportOptions
    from export.pipeline import export_model

    encoder = export_model(str(tiny_encoder_dir), tmp_path_factory.mktemp("fuzz") / "tiny-encoder", ExportOptions())
    models = []
    for directory in (tiny_llama_engine.directory, encoder.directory):
        models += load_models(directory, RuntimeSettings(), slots=4, warm=False, max_tokens_limit=LIMITS.max_tokens, request_timeout_s=LIMITS.request_timeout_s)
    context = ServerContext(ModelRegistry.of(models), LIMITS, auth=load_api_keys(LIMITS))
    yield create_app(context), {m.info.task: m.name for m in models}
    for model in models:
        if model.generator is not None:
            model.generator.close()


def _real_model(operation_path: str, names: dict[str, str], body: dict) -> str:
    """The loaded model that can serve `operation_path` (the embedding model for embedding routes)."""
    return names[TASK_EMBEDDING if "embed" in operation_path else TASK_TEXT_GENERATION]


class _AppProxy:
    """The WSGI app schemathesis calls: the schema is read when this module loads, the engines
    are exported later by fixtures, so requests are forwarded to whatever app the test sets."""

    target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


PROXY = _AppProxy()
# The document the fuzzed server serves (test_the_fuzzed_document_is_the_served_one checks that).
DOCUMENT = openapi_document(LIMITS, authenticated=True)
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.app = PROXY
schema.config.update(headers=AUTH)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
MODEL_NAMES: dict[str, str] = {}


@schema.hook("map_body")
def mostly_real_models(ctx, body):
    # Random model names all end in a 404; most requests name a loaded model instead, so the
    # generated fields reach the engines. Which ones is decided by the body itself.
    if MODEL_NAMES and isinstance(body, dict) and isinstance(body.get("model"), str) and len(json.dumps(body, default=str)) % 5:
        body["model"] = _real_model(ctx.operation.path, MODEL_NAMES, body)
    return body


def test_the_fuzzed_document_is_the_served_one(fuzz_app) -> None:
    app, _ = fuzz_app
    served = falcon.testing.TestClient(app).simulate_get("/openapi.json", headers=AUTH)
    assert served.status_code == 200 and served.json == json.loads(json.dumps(DOCUMENT))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_schemathesis_finds_no_server_error_and_no_schema_break(case, fuzz_app) -> None:
    PROXY.target, names = fuzz_app
    MODEL_NAMES.update(names)
    case.call_and_validate(checks=CHECKS)


# -- hypothesis: arbitrary bodies to every POST route -----------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
FIELDS = (
    "model", "messages", "prompt", "input", "n", "max_tokens", "stream", "options", "tokens", "content", "stop", "logit_bias", "seed", "temperature",
    "instructions", "text", "tools", "previous_response_id", "system", "stop_sequences", "tool_choice",
)
REQUEST_LIKE = st.fixed_dictionaries({}, optional={field: JSON_VALUES for field in FIELDS})
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def post_routes(app_context: ServerContext | None = None) -> list[str]:
    from tests.api.conftest import make_context

    paths = []
    for path, resource in routes(app_context or make_context()):
        if hasattr(resource, "on_post"):
            paths.append(path)
    return paths


POST_ROUTES = post_routes()


def assert_well_formed(path: str, result: falcon.testing.Result) -> None:
    assert result.status_code < 500, (path, result.status_code, result.text[:500])
    if result.status_code >= 400:
        error = result.json["error"]
        if path.startswith("/v1/messages"):  # Anthropic's error object
            assert result.json["type"] == "error" and set(error) == {"type", "message"} and error["message"], result.json
            return
        if path.startswith("/api/"):
            assert isinstance(error, str) and error
        else:
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return
    content_type = result.headers["content-type"]
    if content_type.startswith("text/event-stream"):
        frames = [line[6:] for line in result.text.splitlines() if line.startswith("data: ")]
        if path.startswith("/v1/messages"):  # Anthropic's typed events: message_stop, or an error event
            events = [json.loads(f) for f in frames]
            assert events[0]["type"] == "message_start" and events[-1]["type"] in ("message_stop", "error"), events[-1]
        elif path == "/v1/responses":  # typed events, no [DONE]: the last one says how the response ended
            events = [json.loads(f) for f in frames]
            assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed"), events[-1]
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
        else:
            assert frames[-1] == "[DONE]" and all(json.loads(f) for f in frames[:-1])
    elif content_type.startswith("application/x-ndjson"):
        assert all(json.loads(line) for line in result.text.splitlines() if line.strip())
    else:
        assert content_type.startswith("application/json") and result.json is not None


@pytest.fixture(scope="module")
def fuzz_client(fuzz_app):
    app, names = fuzz_app
    return falcon.testing.TestClient(app), names


@FUZZ
@given(path=st.sampled_from(POST_ROUTES), body=st.binary(max_size=600))
def test_random_bytes(fuzz_client, path: str, body: bytes) -> None:
    client, _ = fuzz_client
    assert_well_formed(path, client.simulate_post(path, body=body, headers={**AUTH, "Content-Type": "application/json"}))


@FUZZ
@given(path=st.sampled_from(POST_ROUTES), document=JSON_VALUES | REQUEST_LIKE, real_model=st.booleans())
def test_random_json(fuzz_client, path: str, document, real_model: bool) -> None:
    client, names = fuzz_client
    if real_model and isinstance(document, dict):
        document["model"] = _real_model(path, names, document)
    body = json.dumps(document, allow_nan=True)  # NaN and Infinity too, as some clients send them
    assert_well_formed(path, client.simulate_post(path, body=body, headers={**AUTH, "Content-Type": "application/json"}))


@FUZZ
@given(path=st.sampled_from(POST_ROUTES), text=st.text(max_size=300), field=st.sampled_from(("prompt", "input", "content", "messages")))
def test_random_unicode(fuzz_client, path: str, text: str, field: str) -> None:
    client, names = fuzz_client
    raw = text.encode("utf-8", "surrogatepass")
    assert_well_formed(path, client.simulate_post(path, body=raw, headers={**AUTH, "Content-Type": "application/json"}))
    # The same text where a model expects it: as a prompt, an input, or a message's content.
    value = [{"role": "user", "content": text}] if field == "messages" else text
    document = {"model": _real_model(path, names, {}), field: value, "max_tokens": 4, "stream": "stream" in path or len(text) % 2 == 0}
    assert_well_formed(path, client.simulate_post(path, body=json.dumps(document), headers={**AUTH, "Content-Type": "application/json"}))


@FUZZ
@given(path=st.sampled_from(POST_ROUTES), authorization=st.none() | st.text(max_size=60))
def test_random_credentials_never_pass(fuzz_client, path: str, authorization) -> None:
    client, names = fuzz_client
    headers = {"Content-Type": "application/json"} | ({} if authorization is None else {"Authorization": authorization})
    try:
        headers_ok = all(v.isascii() and v.isprintable() for v in headers.values())
    except AttributeError:
        headers_ok = False
    if not headers_ok:
        return  # not representable as an HTTP header value
    result = client.simulate_post(path, json={"model": _real_model(path, names, {})}, headers=headers)
    assert result.status_code == 401 and result.headers["www-authenticate"].startswith("Bearer")


def test_every_post_route_is_fuzzed() -> None:
    assert set(POST_ROUTES) >= {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show", "/tokenize", "/detokenize"}

