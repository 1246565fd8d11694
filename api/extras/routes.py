"""Extras: tokenize/detokenize (llama-cpp-python's shapes), health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import falcon

from api.context import ServerContext
from api.errors import BadRequest
from api.extras import bodies as models
from api.framing import read_request, send_json
from api.models.registry import LoadedModel
from api.ui import page as ui
from runtime.manifest import TASK_TEXT_GENERATION


def _model(ctx: ServerContext, name: str | None) -> LoadedModel:
    """The named model, or the only text model when the body names none (llama-cpp-python serves one)."""
    if name is not None:
        return ctx.registry.get(name)
    text_models = [info.name for info in ctx.registry.served() if info.task == TASK_TEXT_GENERATION]
    if len(text_models) != 1:
        raise BadRequest(f"'model' is required: this server has {len(text_models)} text models", param="model")
    return ctx.registry.get(text_models[0])


def _tokenize(model: LoadedModel, text: str, add_special: bool) -> list[int]:
    if model.generator is not None:
        return list(model.generator.tokenize(text, add_special_tokens=add_special))
    return list(model.embeddings().token_ids(text, add_special_tokens=add_special))


class Tokenize:
    def __init__(self, ctx: ServerContext, count_only: bool = False) -> None:
        self.ctx = ctx
        self.count_only = count_only

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.TokenizeRequest)
        text = body.input if body.input is not None else body.content
        if text is None:
            raise BadRequest("'content' (or 'input') is required", param="content")
        tokens = _tokenize(_model(self.ctx, body.model), text, body.add_special is not False)
        send_json(resp, models.TokenCount(count=len(tokens)) if self.count_only else models.Tokens(tokens=tokens))


class Detokenize:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_request(req, self.ctx.settings, models.DetokenizeRequest)
        model = _model(self.ctx, body.model)
        tokens = body.tokens or []
        text = model.generator.detokenize(tokens) if model.generator is not None else model.embeddings().decode(tokens)
        send_json(resp, models.Text(text=text))


class Health:
    """200 once every engine is loaded and warm; 503 with the reason while loading, failed or draining."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        registry = self.ctx.registry
        if self.ctx.draining:
            send_json(resp, models.Health(status="draining", reason="the server is shutting down"), 503)
        elif registry.state == "failed":
            send_json(resp, models.Health(status="failed", reason=registry.reason), 503)
        elif registry.state == "loading":
            send_json(resp, models.Health(status="loading", reason=registry.reason), 503)
            resp.set_header("Retry-After", "5")
        else:
            loaded = registry.models()
            generators = {m.name: models.GeneratorStats(**asdict(m.generator.stats())) for m in loaded if m.generator is not None}
            embedders = {m.name: models.EmbedderStats(**asdict(m.embedder.batch_stats)) for m in loaded if m.embedder is not None}
            send_json(resp, models.Health(status="ok", models=[m.name for m in loaded], pid=os.getpid(), generators=generators, embedders=embedders))

    on_head = on_get


class Metrics:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # This worker's schedulers as they are now (a sequence's slot frees a tick after its
        # stream ends); other workers' figures are from their last generation event.
        if self.ctx.registry.ready:
            for model in self.ctx.registry.models():
                if model.generator is not None:
                    self.ctx.metrics.scheduler(model.name, model.generator.stats())
        body, content_type = self.ctx.metrics.render()
        resp.content_type = content_type
        resp.data = body


class OpenAPI:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, self.document)


class Root:
    """`GET /`: Ollama clients probe it to see whether a server is up; a browser gets the chat page."""

    def __init__(self, page: ui.Page) -> None:
        self.page = page

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.vary = ("Accept",)
        if ui.prefers_html(req):
            self.page.on_get(req, resp)
            return
        resp.content_type = "text/plain; charset=utf-8"
        resp.text = "appliance is running (OpenAI API under /v1, Ollama API under /api)"

    on_head = on_get
