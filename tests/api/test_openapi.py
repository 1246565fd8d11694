"""The OpenAPI document: it names every route the app has (and no other), and it is well formed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from api import __version__
from api.app import routes
from api.context import ServerContext
from api.models.registry import ModelRegistry
from api.openapi import openapi_document

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def _app_routes() -> dict[str, set[str]]:
    """Each path of the app → the HTTP methods its resource implements (`on_get` → get, ...)."""
    ctx = ServerContext(ModelRegistry.of([]))
    return {path: {m for m in HTTP_METHODS if callable(getattr(resource, f"on_{m}", None))} for path, resource in routes(ctx)}


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_header(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "appliance"
    assert document["info"]["version"] == __version__


def test_every_route_with_its_methods(document: dict[str, Any]) -> None:
    app = _app_routes()
    documented = {path: {m for m in item if m in HTTP_METHODS} for path, item in document["paths"].items()}
    assert set(documented) == set(app), "paths differ between the app and the document"
    for path, methods in app.items():
        assert methods, f"{path} has no handlers"
        assert documented[path] == methods, f"{path}: the app has {sorted(methods)}, the document {sorted(documented[path])}"


# POSTs that take no body (OpenAI's too).
BODILESS_POSTS = {"/v1/batches/{batch_id}/cancel"}


def test_operations_are_complete(document: dict[str, Any]) -> None:
    ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            ids.append(operation["operationId"])
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert "200" in operation["responses"], f"{method} {path} documents no success"
            if method == "post" and path not in BODILESS_POSTS:
                body = operation["requestBody"]
                assert body["required"] is True and {"application/json", "multipart/form-data"} & set(body["content"]), f"{method} {path}"
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_errors_in_the_route_dialect(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        expected = "#/components/schemas/OllamaError" if path.startswith("/api/") else "#/components/schemas/OpenAIError"
        if path.startswith("/v1/messages"):
            expected = "#/components/schemas/AnthropicErrorBody"
        for method, operation in item.items():
            if method not in HTTP_METHODS or method == "head":  # answers to HEAD have no body
                continue
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/health":  # /health answers 503 with its own schema
                    assert response["content"] == {"application/json": {"schema": {"$ref": expected}}}, (
                        f"{method} {path} {status}"
                    )


def test_streaming_media_types(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert set(paths[path]["post"]["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    for path in ("/api/generate", "/api/chat"):
        assert set(paths[path]["post"]["responses"]["200"]["content"]) == {"application/json", "application/x-ndjson"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(paths["/health"]["get"]["responses"]) == {"200", "503"}
    parameters = paths["/v1/models/{model_id}"]["parameters"]
    assert [(p["name"], p["in"], p["required"]) for p in parameters] == [("model_id", "path", True)]


def test_uploads_are_described_as_multipart(document: dict[str, Any]) -> None:
    upload = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(upload["required"]) == {"file", "purpose"} and upload["properties"]["purpose"]["enum"] == ["batch"]
    assert "cancelBatch" == document["paths"]["/v1/batches/{batch_id}/cancel"]["post"]["operationId"]


def test_request_schemas_allow_unknown_fields(document: dict[str, Any]) -> None:
    for name, schema in document["components"]["schemas"].items():
        if name.endswith("Request"):
            assert schema.get("additionalProperties", True) is not False, name


def test_serialisable_and_every_ref_resolves(document: dict[str, Any]) -> None:
    assert json.loads(json.dumps(document)) == document
    refs = set(_refs(document))
    assert refs, "the document should share its schemas through $ref"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        _resolve(document, ref)


def test_valid_openapi(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(document)


def test_document_quotes_the_running_limits(make_client) -> None:
    document = make_client(max_n=3, max_inputs=7).simulate_get("/openapi.json").json
    schemas = document["components"]["schemas"]
    n = schemas["ChatCompletionRequest"]["properties"]["n"]["anyOf"]
    assert [branch.get("maximum") for branch in n] == [3, None]
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert [branch.get("maxItems") for branch in prompt] == [None, 7]


def test_every_component_is_generated_from_a_model(document: dict[str, Any]) -> None:
    """msgspec titles each schema it generates: a hand-written component would have no title."""
    untitled = [name for name, schema in document["components"]["schemas"].items() if "title" not in schema]
    assert not untitled, f"hand-written components: {untitled}"


def test_the_field_reference_in_the_docs_is_current() -> None:
    from pathlib import Path

    from api.openapi import fields_reference

    text = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    current = text.split("<!-- fields:begin -->\n", 1)[1].split("<!-- fields:end -->", 1)[0]
    assert current == fields_reference(), "docs/serving.md's field list is stale: paste `python -m api.openapi --fields` between its markers"
