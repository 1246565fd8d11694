"""OpenAI routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models[/{id}]."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import falcon

from api.context import ServerContext
from api.framing import SSE_CONTENT_TYPE, guarded, openai_error_frames, read_request, send_json, send_stream
from api.openai import models, protocol
from api.registry import LoadedModel
from api.runs import Choice, Collected, collect, prepare, stream_events
from api.wire import Reply
from runtime.events import Event
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION


def _answer(ctx: ServerContext, resp: falcon.Response, model: LoadedModel, plan: protocol.Plan, kind: _Kind) -> None:
    """Validate every choice, then run them: one JSON answer, or an SSE stream."""
    prepare(model, plan.choices, kind.prompt_param)
    response_id, created = ctx.new_id(kind.id_prefix), int(ctx.clock())
    if plan.stream:
        events = stream_events(model, plan.choices, ctx.metrics, ctx.settings.stream_keepalive_s)
        frames = kind.render_stream(plan, events, response_id, created, model.info.digest)
        send_stream(resp, guarded(frames, openai_error_frames, ctx.log), SSE_CONTENT_TYPE)
    else:
        results = collect(model, plan.choices, ctx.metrics)
        send_json(resp, kind.render(plan, results, response_id, created, model.info.digest))


@dataclass(frozen=True)
class _Kind:
    """How chat completions and completions differ once parsed."""

    id_prefix: str
    prompt_param: str
    render: Callable[[protocol.Plan, Sequence[Collected], str, int, str], Reply]
    render_stream: Callable[[protocol.Plan, Iterator[tuple[Choice, Event]], str, int, str], Iterator[bytes]]


_CHAT = _Kind("chatcmpl-", "messages", protocol.chat_response, protocol.chat_stream)
_COMPLETION = _Kind("cmpl-", "prompt", protocol.completion_response, protocol.completion_stream)


class ChatCompletions:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.ChatCompletionRequest)
        model = self.ctx.registry.get(body.model, TASK_TEXT_GENERATION)
        _answer(self.ctx, resp, model, protocol.parse_chat(body, model.text(), self.ctx.settings), _CHAT)


class Completions:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.CompletionRequest)
        model = self.ctx.registry.get(body.model, TASK_TEXT_GENERATION)
        _answer(self.ctx, resp, model, protocol.parse_completion(body, model.text(), self.ctx.settings), _COMPLETION)


class Embeddings:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, models.EmbeddingRequest)
        model = ctx.registry.get(body.model, TASK_EMBEDDING)
        plan = protocol.parse_embeddings(body, ctx.settings, model.info.embedding_dimension)
        embedder = model.embeddings()
        if plan.texts is not None:
            result = embedder.encode(plan.texts, truncate=plan.truncate)
        else:
            result = embedder.encode_ids(plan.token_ids or [], truncate=plan.truncate)
        ctx.metrics.embedded(model.name, len(result.token_counts), result.total_tokens)
        send_json(resp, protocol.embeddings_response(plan, result.vectors, result.total_tokens))


class Models:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, models.ModelList(data=[protocol.model_object(m.info) for m in self.ctx.registry.models()]))


class Model:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        send_json(resp, protocol.model_object(self.ctx.registry.get(model_id).info))
