"""OpenAI routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models[/{id}]."""

from __future__ import annotations

import falcon

from api.openai import protocol
from api.context import ServerContext
from api.framing import read_body, send_json, send_stream
from api.runs import collect, prepare, stream_events
from api.framing import SSE_CONTENT_TYPE, guarded, openai_error_frames
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION


class _Generation:
    """Shared by chat completions and completions: parse, validate, run, render."""

    parse = staticmethod(protocol.parse_chat)
    render = staticmethod(protocol.chat_response)
    render_stream = staticmethod(protocol.chat_stream)
    id_prefix = "chatcmpl-"
    prompt_param = "messages"

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_body(req, ctx.settings)
        model = ctx.registry.get(protocol.model_name(body), TASK_TEXT_GENERATION)
        plan = self.parse(body, model.generator, ctx.settings)
        prepare(model, plan.choices, self.prompt_param)
        response_id, created = ctx.new_id(self.id_prefix), int(ctx.clock())
        if plan.stream:
            events = stream_events(model, plan.choices, ctx.metrics, ctx.settings.stream_keepalive_s)
            frames = self.render_stream(plan, events, response_id, created, model.info.digest)
            send_stream(resp, guarded(frames, openai_error_frames, ctx.log), SSE_CONTENT_TYPE)
        else:
            results = collect(model, plan.choices, ctx.metrics)
            send_json(resp, self.render(plan, results, response_id, created, model.info.digest))


class ChatCompletions(_Generation):
    pass


class Completions(_Generation):
    parse = staticmethod(protocol.parse_completion)
    render = staticmethod(protocol.completion_response)
    render_stream = staticmethod(protocol.completion_stream)
    id_prefix = "cmpl-"
    prompt_param = "prompt"


class Embeddings:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_body(req, ctx.settings)
        model = ctx.registry.get(protocol.model_name(body), TASK_EMBEDDING)
        plan = protocol.parse_embeddings(body, ctx.settings, model.info.embedding_dimension)
        if plan.texts is not None:
            result = model.embedder.encode(plan.texts, truncate=plan.truncate)
        else:
            result = model.embedder.encode_ids(plan.token_ids, truncate=plan.truncate)
        ctx.metrics.embedded(model.name, len(result.token_counts), result.total_tokens)
        send_json(resp, protocol.embeddings_response(plan, result.vectors, result.total_tokens))


class Models:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = self.ctx.registry.models()
        send_json(resp, {"object": "list", "data": [protocol.model_object(m.info) for m in models]})


class Model:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        send_json(resp, protocol.model_object(self.ctx.registry.get(model_id).info))
