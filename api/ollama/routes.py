"""Ollama routes: /api/generate, /api/chat, /api/embed, /api/embeddings, /api/tags, /api/show, /api/ps, /api/version,
and the model lifecycle: /api/pull, /api/delete, /api/copy (api/models/pulls.py, api/models/store.py) and keep_alive (api/models/residency.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import falcon

from api import __version__
from api.context import ServerContext
from api.errors import BadRequest, ModelNotFound, NotPullable, NotSupported
from api.framing import NDJSON_CONTENT_TYPE, NDJSON_KEEPALIVE, guarded, ndjson_line, ollama_error_line, read_request, send_json, send_stream
from api.generation.runs import collect, stream_events
from api.models.pulls import PULLING_MANIFEST, SUCCESS, Status
from api.models.registry import LoadedModel, TextModel
from api.models.store import copy_engine, delete_engine, engine_name, name_lock, writable_folder
from api.ollama import bodies as models
from api.ollama import protocol
from api.settings import ServerSettings
from runtime.manifest import MANIFEST_FILE, TASK_EMBEDDING, TASK_TEXT_GENERATION

B = TypeVar("B", models.GenerateRequest, models.ChatRequest)


def _answer(ctx: ServerContext, resp: falcon.Response, model: LoadedModel, plan: protocol.Plan) -> None:
    """Run the plan: a load-only answer, one JSON object, or an NDJSON stream."""
    if plan.choice is None:
        loaded = protocol.load_response(plan, protocol.timestamp(ctx.clock()))
        if plan.stream:
            send_stream(resp, iter([ndjson_line(loaded)]), NDJSON_CONTENT_TYPE)
        else:
            send_json(resp, loaded)
        return
    if plan.stream:
        frames = protocol.stream(plan, stream_events(model, [plan.choice], ctx.metrics, ctx.settings.stream_keepalive_s), ctx.clock)
        send_stream(resp, guarded(frames, ollama_error_line, ctx.log), NDJSON_CONTENT_TYPE)
    else:
        (result,) = collect(model, [plan.choice], ctx.metrics)
        send_json(resp, protocol.response(plan, result, protocol.timestamp(ctx.clock())))


def _unload(ctx: ServerContext, resp: falcon.Response, body: models.GenerateRequest | models.ChatRequest) -> None:
    """Ollama's unload call: the model goes now, or as soon as the requests using it end."""
    ctx.registry.unload(body.model)
    answer = protocol.unload_response(body.model, isinstance(body, models.ChatRequest), protocol.timestamp(ctx.clock()))
    if body.stream is not False:
        send_stream(resp, iter([ndjson_line(answer)]), NDJSON_CONTENT_TYPE)
    else:
        send_json(resp, answer)


@dataclass(frozen=True)
class _Kind(Generic[B]):
    """How /api/generate and /api/chat differ: the body's type and how it becomes a plan."""

    body: type[B]
    parse: Callable[[B, TextModel, ServerSettings], protocol.Plan]


GENERATE = _Kind(models.GenerateRequest, protocol.parse_generate)
CHAT = _Kind(models.ChatRequest, protocol.parse_chat)


class Generation(Generic[B]):
    """POST /api/generate (GENERATE) and /api/chat (CHAT), one path: read the body, unload or
    use the model (keep_alive), plan, answer."""

    def __init__(self, ctx: ServerContext, kind: _Kind[B]) -> None:
        self.ctx = ctx
        self.kind: _Kind[B] = kind

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, self.kind.body)
        if protocol.unloads(body):
            return _unload(self.ctx, resp, body)
        use = self.ctx.registry.use(body.model, TASK_TEXT_GENERATION, protocol.keep_alive_seconds(body.keep_alive))
        plan = self.kind.parse(body, use.model.text(), self.ctx.settings)
        plan.load_ns = use.load_ns
        _answer(self.ctx, resp, use.model, plan)


class Embed:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        started = time.perf_counter_ns()
        body = read_request(req, ctx.settings, models.EmbedRequest)
        keep_alive = protocol.keep_alive_seconds(body.keep_alive)
        if keep_alive == 0 and not body.input:  # nothing to embed: unload, as the generate routes do
            ctx.registry.unload(body.model)
            send_json(resp, models.EmbedResponse(model=body.model, embeddings=[], total_duration=0, load_duration=0, prompt_eval_count=0))
            return
        use = ctx.registry.use(body.model, TASK_EMBEDDING, keep_alive)
        model = use.model
        texts = protocol.embed_texts(body, ctx.settings.max_inputs, model.info.embedding_dimension)
        embeddings: list[list[float]] = []
        tokens = 0
        if texts:
            result = model.embeddings().encode(texts, truncate=body.truncate is not False)
            embeddings, tokens = result.vectors.tolist(), result.total_tokens
            ctx.metrics.embedded(model.name, len(texts), tokens)
        elapsed = time.perf_counter_ns() - started
        send_json(resp, models.EmbedResponse(model=body.model, embeddings=embeddings, total_duration=elapsed, load_duration=use.load_ns, prompt_eval_count=tokens))


class Embeddings:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, models.EmbeddingsRequest)
        keep_alive = protocol.keep_alive_seconds(body.keep_alive)
        if keep_alive == 0 and not body.prompt:  # nothing to embed: unload, as the generate routes do
            ctx.registry.unload(body.model)
            send_json(resp, models.EmbeddingsResponse(embedding=[]))
            return
        model = ctx.registry.use(body.model, TASK_EMBEDDING, keep_alive).model
        if not body.prompt:  # Ollama answers an empty prompt with an empty vector
            send_json(resp, models.EmbeddingsResponse(embedding=[]))
            return
        result = model.embeddings().encode([body.prompt], truncate=True)
        ctx.metrics.embedded(model.name, 1, result.total_tokens)
        send_json(resp, models.EmbeddingsResponse(embedding=result.vectors[0].tolist()))


class Tags:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, models.TagList(models=[protocol.tags_entry(info) for info in self.ctx.registry.served()]))


class Ps:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = self.ctx.clock()
        send_json(resp, models.RunningList(models=[protocol.ps_entry(r.info, r.expires_in_s, now) for r in self.ctx.registry.running()]))


class Show:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.ShowRequest)
        name = body.model or body.name  # older clients send "name"
        if not name:
            raise BadRequest("'model' is required", param="model")
        send_json(resp, protocol.show_response(self.ctx.registry.info(name)))


class Version:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, models.Version(version=protocol.OLLAMA_API_VERSION, appliance=__version__))


class Pull:
    """POST /api/pull: a served model at once; a default model's engine built into the engines folder; else a 404 naming what can be pulled."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, models.PullRequest)
        name = engine_name(body.model or body.name, "model")
        stream = body.stream is not False
        registry = ctx.registry
        try:
            registry.info(name)
            served = True
        except ModelNotFound:
            served = False
        if served:
            lines = [Status(PULLING_MANIFEST), Status(SUCCESS)]
            statuses: Iterator[Status | None] = iter(lines)
        elif ctx.pulls.can_build(name):
            folder = writable_folder(registry, ctx.settings, f"pulling {name}, which is not built yet,")
            statuses = ctx.pulls.start(name, folder, registry).follow(ctx.settings.stream_keepalive_s)
        else:
            raise NotPullable(name, sorted(i.name for i in registry.served()), ctx.pulls.buildable())
        if not stream:
            for _ in statuses:  # the build's errors raise here, answered in Ollama's form
                pass
            send_json(resp, models.ProgressResponse(status=SUCCESS))
            return
        frames = (NDJSON_KEEPALIVE if status is None else ndjson_line(protocol.progress_line(status)) for status in statuses)
        send_stream(resp, guarded(frames, ollama_error_line, ctx.log), NDJSON_CONTENT_TYPE)


class Delete:
    """DELETE /api/delete: the engine directory goes from the engines folder (unloaded first, or when its requests end)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, models.DeleteRequest)
        name = engine_name(body.model or body.name, "model")
        folder = writable_folder(ctx.registry, ctx.settings, "deleting a model")
        info = ctx.registry.info(name)  # a 404 for a model not served
        with name_lock(folder, info.name):  # not while a pull or copy of that name runs
            _, directory = ctx.registry.remove(info.name)
            if directory is not None and directory.parent == folder and directory.is_dir():
                delete_engine(directory)
        resp.status = 200


class Copy:
    """POST /api/copy: the source's engine directory copied under the destination's name, which then serves it."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, models.CopyRequest)
        source = engine_name(body.source, "source")
        destination = engine_name(body.destination, "destination")
        folder = writable_folder(ctx.registry, ctx.settings, "copying a model")
        info = ctx.registry.info(source)  # a 404 for a model not served
        with name_lock(folder, destination):
            if (folder / destination).exists() or _serves(ctx, destination):
                raise BadRequest(f"'destination': a model called '{destination}' exists already; delete it first or choose another name", param="destination")
            source_dir = ctx.registry.directory(info.name)
            if source_dir is None or not (source_dir / MANIFEST_FILE).is_file():
                raise NotSupported(f"model '{source}' has no engine directory to copy", param="source")
            copy_engine(source_dir, folder / destination)
            ctx.registry.add(folder / destination)
        resp.status = 200


def _serves(ctx: ServerContext, name: str) -> bool:
    try:
        ctx.registry.info(name)
    except ModelNotFound:
        return False
    return True
