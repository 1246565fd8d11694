"""The OpenAPI document's Anthropic paths (api/anthropic): /v1/messages and its count_tokens, with
Anthropic's own error object and typed events, laid out with paths.py's helpers around the
components document.py generates (named with the Anthropic prefix)."""

from __future__ import annotations

from typing import Any

from api.openapi.paths import _JSON, _WITH_BODY, Schema, _errors, _obj, _operation, _ref, _string  # the package's own helpers

ANTHROPIC_PREFIX = "Anthropic"
_ANTHROPIC_EVENTS = ("MessageStart", "BlockStart", "BlockDelta", "BlockStop", "MessageDelta", "MessageStop", "Ping", "ErrorBody")
_REQUEST_ID = {"request-id": {"description": "This request's id (req_...), as Anthropic's answers carry it.", "schema": _string()}}


def _anthropic(name: str) -> Schema:
    return _ref(ANTHROPIC_PREFIX + name)


def _anthropic_ok(description: str, schema: Schema, stream: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {_JSON: {"schema": schema}}
    if stream is not None:
        content["text/event-stream"] = {"schema": stream}
    return {"description": description, "headers": _REQUEST_ID, "content": content}


def anthropic_paths() -> dict[str, Any]:
    """Anthropic's Messages API: its own error object (`AnthropicErrorBody`), typed SSE events."""
    errors = _errors(ANTHROPIC_PREFIX + "ErrorBody", _WITH_BODY)
    event = _obj(
        {
            "event": _string("The event's type."),
            "data": {"contentMediaType": _JSON, "contentSchema": {"anyOf": [_anthropic(name) for name in _ANTHROPIC_EVENTS]}},
        },
        ["event", "data"],
        description="One server-sent event.",
    )
    stream = (
        "With `stream: true`: server-sent events, each an `event:` line naming its type and a `data:` line holding the event: "
        "message_start, then per content block content_block_start, content_block_delta (text_delta, or input_json_delta for "
        "a tool call's arguments) and content_block_stop, then message_delta (stop_reason, usage) and message_stop; `ping` "
        "events keep a waiting connection alive, and a failure after the first byte is an `error` event."
    )
    return {
        "/v1/messages": {
            "post": _operation(
                "createMessage",
                "Create a message (Anthropic Messages API)",
                "Anthropic",
                _anthropic_ok(f"The message (`stream` false or absent). {stream}", _anthropic("Message"), event),
                errors,
                ANTHROPIC_PREFIX + "MessagesRequest",
                "`system` and the messages' text, tool_use and tool_result blocks are rendered through the model's chat "
                "template; `tools` and `tool_choice` constrain tool calls to the tools' input schemas. A final assistant "
                "message is a prefill the answer continues. `max_tokens` is an upper bound: an answer that fills the "
                "context first ends with stop_reason `model_context_window_exceeded`. The key may come as `x-api-key`.",
            )
        },
        "/v1/messages/count_tokens": {
            "post": _operation(
                "countMessageTokens",
                "Count a message request's input tokens",
                "Anthropic",
                _anthropic_ok("The prompt's length in tokens, system and tools included.", _anthropic("TokenCount")),
                errors,
                ANTHROPIC_PREFIX + "CountTokensRequest",
            )
        },
    }
