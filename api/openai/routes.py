"""OpenAI routes: /v1/chat/completions, /v1/completions, /v1/responses[/{id}[/input_items]], /v1/embeddings, /v1/models[/{id}]."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import falcon

from api.context import ServerContext
from api.errors import BadRequest
from api.framing import SSE_CONTENT_TYPE, guarded, openai_error_frames, read_request, send_json, send_stream
from api.generation.runs import Choice, Collected, collect, gather, stream_events
from api.models.registry import LoadedModel
from api.openai import bodies as models
from api.openai import protocol, responses
from api.openai import response_bodies as rm
from api.wire import Reply
from runtime.events import Event
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION


def _answer(ctx: ServerContext, resp: falcon.Response, model: LoadedModel, plan: protocol.Plan, kind: _Kind) -> None:
    """Validate every choice, then run them: one JSON answer, or an SSE stream."""
    events = stream_events(model, plan.choices, ctx.metrics, ctx.settings.stream_keepalive_s if plan.stream else None, kind.prompt_param)
    response_id, created = ctx.new_id(kind.id_prefix), int(ctx.clock())
    if plan.stream:
        frames = kind.render_stream(plan, events, response_id, created, model.info.digest)
        send_stream(resp, guarded(frames, openai_error_frames, ctx.log), SSE_CONTENT_TYPE)
    else:
        send_json(resp, kind.render(plan, gather(plan.choices, events), response_id, created, model.info.digest))


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


class Responses:
    """POST /v1/responses: one answer, or typed SSE events; stored unless `store` is false."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, rm.ResponseRequest)
        model = ctx.registry.get(body.model, TASK_TEXT_GENERATION)
        plan = responses.parse(body, model.text(), ctx.settings, ctx.responses, ctx.new_id, int(ctx.clock()))
        if body.stream:
            events = stream_events(model, plan.chat.choices, ctx.metrics, ctx.settings.stream_keepalive_s, "input")
            send_stream(resp, responses.stream(plan, events, ctx.responses, ctx.clock, ctx.log), SSE_CONTENT_TYPE)
        else:
            (result,) = collect(model, plan.chat.choices, ctx.metrics, "input")
            send_json(resp, responses.finished(plan, result, ctx.responses, ctx.clock()))


class StoredResponse:
    """GET /v1/responses/{id} (the stored response) and DELETE (forget it)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        if req.get_param_as_bool("stream"):
            raise BadRequest("replaying a stored response as a stream is not supported; GET it whole", param="stream")
        send_json(resp, responses.stored(self.ctx.responses, response_id).response)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        responses.stored(self.ctx.responses, response_id)
        self.ctx.responses.delete(response_id)
        send_json(resp, rm.DeletedResponse(id=response_id))


class ResponseInputItems:
    """GET /v1/responses/{id}/input_items: the items the response was given (`order`, `limit`, `after`)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, response_id: str) -> None:
        record = responses.stored(self.ctx.responses, response_id)
        order = req.get_param("order") or "desc"
        if order not in ("asc", "desc"):
            raise BadRequest("'order' must be 'asc' or 'desc'", param="order")
        try:
            limit = req.get_param_as_int("limit", min_value=1, max_value=100)
        except falcon.HTTPBadRequest:
            raise BadRequest("'limit' must be a whole number from 1 to 100", param="limit") from None
        send_json(resp, responses.input_item_list(record, order, limit or 20, req.get_param("after")))


class Embeddings:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, embedding_reply(self.ctx, read_request(req, self.ctx.settings, models.EmbeddingRequest)))


def embedding_reply(ctx: ServerContext, body: models.EmbeddingRequest) -> models.EmbeddingList:
    """The answer of /v1/embeddings to `body` (the route's, and a batch line's: api/batches/lines.py)."""
    model = ctx.registry.get(body.model, TASK_EMBEDDING)
    plan = protocol.parse_embeddings(body, ctx.settings, model.info.embedding_dimension)
    embedder = model.embeddings()
    if plan.texts is not None:
        result = embedder.encode(plan.texts, truncate=plan.truncate)
    else:
        result = embedder.encode_ids(plan.token_ids or [], truncate=plan.truncate)
    ctx.metrics.embedded(model.name, len(result.token_counts), result.total_tokens)
    return protocol.embeddings_response(plan, result.vectors, result.total_tokens)


class Models:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, models.ModelList(data=[protocol.model_object(info) for info in self.ctx.registry.served()]))


class Model:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        send_json(resp, protocol.model_object(self.ctx.registry.info(model_id)))
