"""Ollama routes: /api/generate, /api/chat, /api/embed, /api/embeddings, /api/tags, /api/show, /api/ps, /api/version."""

from __future__ import annotations

import time

import falcon

from api import __version__
from api.context import ServerContext
from api.errors import BadRequest
from api.framing import NDJSON_CONTENT_TYPE, guarded, ndjson_line, ollama_error_line, read_request, send_json, send_stream
from api.ollama import models, protocol
from api.registry import LoadedModel
from api.runs import collect, prepare, stream_events
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION


def _answer(ctx: ServerContext, resp: falcon.Response, model: LoadedModel, plan: protocol.Plan) -> None:
    """Run the plan: a load-only answer, one JSON object, or an NDJSON stream."""
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


class Generate:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.GenerateRequest)
        model = self.ctx.registry.get(body.model, TASK_TEXT_GENERATION)
        _answer(self.ctx, resp, model, protocol.parse_generate(body, model.text(), self.ctx.settings))


class Chat:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.ChatRequest)
        model = self.ctx.registry.get(body.model, TASK_TEXT_GENERATION)
        _answer(self.ctx, resp, model, protocol.parse_chat(body, model.text(), self.ctx.settings))


class Embed:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        started = time.perf_counter_ns()
        body = read_request(req, ctx.settings, models.EmbedRequest)
        model = ctx.registry.get(body.model, TASK_EMBEDDING)
        texts = protocol.embed_texts(body, ctx.settings.max_inputs, model.info.embedding_dimension)
        embeddings: list[list[float]] = []
        tokens = 0
        if texts:
            result = model.embeddings().encode(texts, truncate=body.truncate is not False)
            embeddings, tokens = [[float(x) for x in v] for v in result.vectors], result.total_tokens
            ctx.metrics.embedded(model.name, len(texts), tokens)
        elapsed = time.perf_counter_ns() - started
        send_json(resp, models.EmbedResponse(model=body.model, embeddings=embeddings, total_duration=elapsed, load_duration=0, prompt_eval_count=tokens))


class Embeddings:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, models.EmbeddingsRequest)
        model = ctx.registry.get(body.model, TASK_EMBEDDING)
        if not body.prompt:  # Ollama answers an empty prompt with an empty vector
            send_json(resp, models.EmbeddingsResponse(embedding=[]))
            return
        result = model.embeddings().encode([body.prompt], truncate=True)
        ctx.metrics.embedded(model.name, 1, result.total_tokens)
        send_json(resp, models.EmbeddingsResponse(embedding=[float(x) for x in result.vectors[0]]))


class Tags:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, models.TagList(models=[protocol.tags_entry(m.info) for m in self.ctx.registry.models()]))


class Ps:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, models.RunningList(models=[protocol.ps_entry(m.info) for m in self.ctx.registry.models()]))


class Show:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.ShowRequest)
        name = body.model or body.name  # older clients send "name"
        if not name:
            raise BadRequest("'model' is required", param="model")
        send_json(resp, protocol.show_response(self.ctx.registry.get(name).info))


class Version:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, models.Version(version=protocol.OLLAMA_API_VERSION, appliance=__version__))
