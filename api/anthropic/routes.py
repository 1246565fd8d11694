"""Anthropic routes: POST /v1/messages and POST /v1/messages/count_tokens.

Coding agents and SDKs that speak only this API (the `anthropic` SDK, Claude Code with
ANTHROPIC_BASE_URL) reach the same engines as the OpenAI and Ollama routes. Every answer
carries a `request-id` header, as Anthropic's do; errors are Anthropic's error object
(`{"type": "error", "error": {"type", "message"}}`, app.py writes it for these paths).
"""

from __future__ import annotations

import falcon

from api.anthropic import bodies as a
from api.anthropic import protocol
from api.context import ServerContext
from api.framing import SSE_CONTENT_TYPE, read_request, send_json, send_stream
from api.generation.runs import collect, stream_events
from runtime.manifest import TASK_TEXT_GENERATION

PATH_PREFIX = "/v1/messages"
REQUEST_ID_HEADER = "request-id"
# Anthropic's clients send it on every request; GET /v1/models answers them in Anthropic's shape.
VERSION_HEADER = "anthropic-version"


def speaks_anthropic(req: falcon.Request) -> bool:
    """A request to answer in Anthropic's dialect: its routes, or /v1/models asked by an Anthropic client."""
    return req.path.startswith(PATH_PREFIX) or (req.path.startswith("/v1/models") and req.get_header(VERSION_HEADER) is not None)


class Messages:
    """POST /v1/messages: one message, or its typed SSE events."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, a.MessagesRequest)
        model = ctx.registry.get(body.model, TASK_TEXT_GENERATION)
        plan = protocol.parse(body, model.text(), ctx.settings, model.info.context_length, ctx.new_id("msg_"))
        resp.set_header(REQUEST_ID_HEADER, ctx.new_id("req_"))
        if body.stream:
            events = stream_events(model, plan.chat.choices, ctx.metrics, ctx.settings.stream_keepalive_s, "messages")
            send_stream(resp, protocol.stream(plan, events, ctx.log), SSE_CONTENT_TYPE)
        else:
            (result,) = collect(model, plan.chat.choices, ctx.metrics, "messages")
            send_json(resp, protocol.message(plan, result))


class CountTokens:
    """POST /v1/messages/count_tokens: the prompt's length as the model would read it (tools and system included)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, a.CountTokensRequest)
        model = ctx.registry.get(body.model, TASK_TEXT_GENERATION)
        resp.set_header(REQUEST_ID_HEADER, ctx.new_id("req_"))
        send_json(resp, protocol.count_tokens(body, model.text(), ctx.settings))


class Models:
    """GET /v1/models and /v1/models/{id} for Anthropic's clients (`client.models.list()`): the text models."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str | None = None) -> None:
        resp.set_header(REQUEST_ID_HEADER, self.ctx.new_id("req_"))
        if model_id is None:
            send_json(resp, protocol.model_list(self.ctx.registry.served()))
        else:
            send_json(resp, protocol.model_info(self.ctx.registry.get(model_id, TASK_TEXT_GENERATION).info))
