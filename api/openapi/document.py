"""The OpenAPI 3.1 document of the server, served at `/openapi.json`, generated from the wire models.

Every request and answer schema comes from the msgspec models that decode and encode the
bodies (`api/*/bodies.py`, `api/errors.py`); paths.py lays out the paths and
operations around them, and this module adds what the models cannot know:

- the running server's limits (`n`, messages, prompts and inputs, max_tokens), so a
  schema-driven client sees the limits it will meet;
- for each field a class's `refused` table lists, why sending it is a 400 for now.

Unknown fields are ignored, so no request schema forbids additional properties, and `null`
reads as "not given", so every optional field also accepts `null`. Errors come in three
dialects: OpenAI's error object on `/v1/*` and the extras, Ollama's `{"error": "..."}`
under `/api/*`, Anthropic's error object under `/v1/messages`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from api import __version__
from api.anthropic import bodies as anthropic
from api.batches import bodies as batches
from api.errors import OllamaError, OpenAIError
from api.extras import bodies as extras
from api.ollama import bodies as ollama
from api.openai import bodies as openai
from api.openai import response_bodies as responses
from api.openapi.anthropic_paths import ANTHROPIC_PREFIX, anthropic_paths
from api.openapi.batch_paths import batch_paths
from api.openapi.paths import (
    COMPONENTS,
    Schema,
    extras_paths,
    ollama_paths,
    openai_paths,
    page_paths,
)
from api.openapi.rerank_paths import rerank_paths
from api.rerank import bodies as rerank
from api.settings import ServerSettings
from api.wire import Body

# The bodies of each dialect; their component names are the class names, Ollama's prefixed.
_OPENAI_TYPES: tuple[type, ...] = (
    openai.ChatCompletionRequest, openai.ChatCompletion, openai.ChatCompletionChunk,
    openai.CompletionRequest, openai.Completion, openai.CompletionChunk,
    openai.EmbeddingRequest, openai.EmbeddingList, openai.Model, openai.ModelList,
    responses.ResponseRequest, responses.Response, responses.DeletedResponse, responses.InputItemList,
    responses.ResponseEvent, responses.ItemEvent, responses.PartEvent, responses.TextDeltaEvent, responses.TextDoneEvent,
    responses.ArgumentsDeltaEvent, responses.ArgumentsDoneEvent, responses.ErrorEvent,
    extras.TokenizeRequest, extras.Tokens, extras.TokenCount, extras.DetokenizeRequest, extras.Text, extras.Health,
    rerank.RerankRequest, rerank.RerankResponse,
    batches.BatchCreateRequest, batches.Batch, batches.BatchList, batches.FileObject, batches.FileList, batches.FileDeleted,
    OpenAIError, OllamaError,
)
_OLLAMA_TYPES: tuple[type, ...] = (
    ollama.GenerateRequest, ollama.GenerateResponse, ollama.ChatRequest, ollama.ChatResponse,
    ollama.EmbedRequest, ollama.EmbedResponse, ollama.EmbeddingsRequest, ollama.EmbeddingsResponse,
    ollama.ShowRequest, ollama.ShowResponse, ollama.TagList, ollama.RunningList, ollama.Version,
    ollama.PullRequest, ollama.ProgressResponse, ollama.DeleteRequest, ollama.CopyRequest,
)
OLLAMA_PREFIX = "Ollama"
_ANTHROPIC_TYPES: tuple[type, ...] = (
    anthropic.MessagesRequest, anthropic.CountTokensRequest, anthropic.Message, anthropic.TokenCount, anthropic.ErrorBody,
    anthropic.MessageStart, anthropic.BlockStart, anthropic.BlockDelta, anthropic.BlockStop, anthropic.MessageDelta, anthropic.MessageStop,
    anthropic.Ping, anthropic.ModelList,
)
# Each dialect's request models are named with its prefix (OpenAI's and the extras' with none).
_PREFIXES = {ollama.__name__: OLLAMA_PREFIX, anthropic.__name__: ANTHROPIC_PREFIX}


def _any_json(kind: type) -> Schema:
    """Fields typed `object` take any JSON value (the refused ones, mostly)."""
    if kind is object:
        return {"description": "Any JSON value."}
    raise NotImplementedError(kind)


def _components(types: Iterable[type], prefix: str = "") -> dict[str, Schema]:
    """Schemas of `types` and everything they refer to, named `prefix` + class name."""
    _, components = msgspec.json.schema_components(list(types), schema_hook=_any_json, ref_template=COMPONENTS + prefix + "{name}")
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
    _limit(schemas, ANTHROPIC_PREFIX + "MessagesRequest", "max_tokens", maximum=limits.max_tokens)
    for component in ("MessagesRequest", "CountTokensRequest"):
        _limit(schemas, ANTHROPIC_PREFIX + component, "messages", maxItems=limits.max_messages)
    _limit(schemas, OLLAMA_PREFIX + "Options", "num_predict", maximum=limits.max_tokens)
    _limit_union(schemas, "CompletionRequest", "prompt", limits.max_inputs)
    _limit_union(schemas, "EmbeddingRequest", "input", limits.max_inputs)
    _limit(schemas, "RerankRequest", "documents", maxItems=limits.max_rerank_documents)
    _limit_union(schemas, OLLAMA_PREFIX + "EmbedRequest", "input", limits.max_inputs)


def _refusals(schemas: dict[str, Schema]) -> None:
    """Each refused field says so, and why, in its description."""
    for kind in _request_models():
        prefix = _PREFIXES.get(kind.__module__, "")
        properties = schemas.get(prefix + kind.__name__, {}).get("properties", {})
        for field, refusal in kind.refused.items():
            if field in properties:
                properties[field]["description"] = f"Not supported yet ({refusal.why}): sending it is a 400, unless it asks for nothing."


def _schemas(limits: ServerSettings) -> dict[str, Schema]:
    schemas = {**_components(_OPENAI_TYPES), **_components(_OLLAMA_TYPES, OLLAMA_PREFIX), **_components(_ANTHROPIC_TYPES, ANTHROPIC_PREFIX)}
    _running_limits(schemas, limits)
    _refusals(schemas)
    return schemas


def openapi_document(limits: ServerSettings = ServerSettings(), authenticated: bool = False) -> dict[str, Any]:
    """The whole OpenAPI 3.1.0 document for a server with `limits`: every route, its request and response schemas.

    With `authenticated` (the server has API keys) every operation but the health check requires the bearer key.
    """
    security: dict[str, list[dict[str, list[str]]]] = {"security": [{"apiKey": []}, {"anthropicKey": []}]} if authenticated else {}
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
            {"name": "Rerank", "description": "Jina's and Cohere's rerank API (cross-encoder models); errors are OpenAI error objects."},
            {"name": "Ollama", "description": 'Ollama\'s API under /api; errors are `{"error": "..."}`.'},
            {"name": "Anthropic", "description": 'Anthropic\'s Messages API under /v1/messages; errors are `{"type": "error", "error": {...}}`.'},
            {"name": "Extras", "description": "Tokenizer, health, metrics and this document; errors are OpenAI error objects."},
            {"name": "Page", "description": "The built-in chat page and its assets; loaded without a key (its API calls send one)."},
        ],
        **security,
        "paths": {**openai_paths(), **rerank_paths(), **batch_paths(), **anthropic_paths(), **ollama_paths(), **extras_paths(), **page_paths()},
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the server's API keys (--api-key-file); required on every route but /health when the "
                    "server has keys.",
                },
                "anthropicKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same keys as Anthropic's clients send them; accepted on every route.",
                },
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
    ("POST /v1/rerank, /v2/rerank, /rerank", rerank.RerankRequest),
    ("  documents[] (objects)", rerank.RerankDocumentInput),
    ("POST /v1/messages (Anthropic)", anthropic.MessagesRequest),
    ("  messages[]", anthropic.InputMessage),
    ("  tools[]", anthropic.Tool),
    ("  tool_choice", anthropic.ToolChoice),
    ("  output_config", anthropic.OutputConfig),
    ("POST /v1/messages/count_tokens (Anthropic)", anthropic.CountTokensRequest),
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
