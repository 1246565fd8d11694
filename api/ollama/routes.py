"""Ollama routes: /api/generate, /api/chat, /api/embed, /api/embeddings, /api/tags, /api/show, /api/ps, /api/version."""

from __future__ import annotations

import time

import falcon

from api.ollama import protocol
from api.body import Fields
from api.context import ServerContext
from api.errors import BadRequest
from api.framing import read_body, send_json, send_stream
from api.runs import collect, prepare, stream_events
from api.framing import NDJSON_CONTENT_TYPE, guarded, ndjson_line, ollama_error_line
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION


class _Generation:
    parse = staticmethod(protocol.parse_generate)

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_body(req, ctx.settings)
        model = ctx.registry.get(Fields(body).string("model", required=True), TASK_TEXT_GENERATION)
        plan = self.parse(body, model.generator, ctx.settings)
        if plan.choice is None:
            loaded = protocol.load_response(plan, protocol.timestamp(ctx.clock()))
            if plan.stream:
                send_stream(resp, iter([ndjson_line(loaded)]), NDJSON_CONTENT_TYPE)
            else:
                send_json(resp, loaded)
            return
        prepare(model, [plan.choice])
        if plan.stream:
            frames = protocol.stream(plan, stream_events(model, [plan.choice], ctx.metrics, ctx.settings.stream_keepalive_s), ctx.clock)
            send_stream(resp, guarded(frames, ollama_error_line, ctx.log), NDJSON_CONTENT_TYPE)
        else:
            (result,) = collect(model, [plan.choice], ctx.metrics)
            send_json(resp, protocol.response(plan, result, protocol.timestamp(ctx.clock())))


class Generate(_Generation):
    pass


class Chat(_Generation):
    parse = staticmethod(protocol.parse_chat)


class Embed:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        started = time.perf_counter_ns()
        body = read_body(req, ctx.settings)
        model = ctx.registry.get(Fields(body).string("model", required=True), TASK_EMBEDDING)
        name, texts, truncate = protocol.parse_embed(body, ctx.settings.max_inputs, model.info.embedding_dimension)
        embeddings, tokens = [], 0
        if texts:
            result = model.embedder.encode(texts, truncate=truncate)
            embeddings, tokens = [[float(x) for x in v] for v in result.vectors], result.total_tokens
            ctx.metrics.embedded(model.name, len(texts), tokens)
        send_json(
            resp,
            {
                "model": name,
                "embeddings": embeddings,
                "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": tokens,
            },
        )


class Embeddings:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        name, prompt = protocol.parse_embeddings(read_body(req, ctx.settings))
        model = ctx.registry.get(name, TASK_EMBEDDING)
        if not prompt:  # Ollama answers an empty prompt with an empty vector
            send_json(resp, {"embedding": []})
            return
        result = model.embedder.encode([prompt], truncate=True)
        ctx.metrics.embedded(model.name, 1, result.total_tokens)
        send_json(resp, {"embedding": [float(x) for x in result.vectors[0]]})


class Tags:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"models": [protocol.tags_entry(m.info) for m in self.ctx.registry.models()]})


class Ps:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"models": [protocol.ps_entry(m.info) for m in self.ctx.registry.models()]})


class Show:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = Fields(read_body(req, self.ctx.settings))
        name = f.string("model") or f.string("name")  # older clients send "name"
        if not name:
            raise BadRequest("'model' is required", param="model")
        send_json(resp, protocol.show_response(self.ctx.registry.get(name).info))


class Version:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from api import __version__

        send_json(resp, {"version": protocol.OLLAMA_API_VERSION, "appliance": __version__})
