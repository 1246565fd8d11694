"""Extras: tokenize/detokenize (llama-cpp-python's shapes), health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import falcon

from api.body import Fields
from api.context import ServerContext
from api.errors import BadRequest
from api.registry import LoadedModel
from api.framing import read_body, send_json


def _model(ctx: ServerContext, f: Fields) -> LoadedModel:
    """The named model, or the only text model when the body names none (llama-cpp-python serves one)."""
    name = f.string("model")
    if name is not None:
        return ctx.registry.get(name)
    text_models = [m for m in ctx.registry.models() if m.generator is not None]
    if len(text_models) != 1:
        raise BadRequest(f"'model' is required: this server has {len(text_models)} text models", param="model")
    return text_models[0]


def _tokenize(model: LoadedModel, text: str, add_special: bool) -> list[int]:
    if model.generator is not None:
        return list(model.generator.tokenize(text, add_special_tokens=add_special))
    return list(model.embedder.token_ids(text, add_special_tokens=add_special))


def _text(f: Fields) -> str:
    # llama-cpp-python sends `input`; llama.cpp's own server sends `content`.
    text = f.string("input")
    return text if text is not None else f.string("content", required=True)


class Tokenize:
    def __init__(self, ctx: ServerContext, count_only: bool = False) -> None:
        self.ctx = ctx
        self.count_only = count_only

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = Fields(read_body(req, self.ctx.settings))
        model = _model(self.ctx, f)
        tokens = _tokenize(model, _text(f), f.boolean("add_special", True))
        send_json(resp, {"count": len(tokens)} if self.count_only else {"tokens": tokens})


class Detokenize:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        f = Fields(read_body(req, self.ctx.settings))
        model = _model(self.ctx, f)
        tokens = f.token_ids("tokens")
        if model.generator is not None:
            text = model.generator.detokenize(tokens)
        else:
            text = model.embedder.engine.tokenizer.decode(list(tokens), skip_special_tokens=True)
        send_json(resp, {"text": text})


class Health:
    """200 once every engine is loaded and warm; 503 with the reason while loading, failed or draining."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        registry = self.ctx.registry
        if self.ctx.draining:
            send_json(resp, {"status": "draining", "reason": "the server is shutting down"}, 503)
        elif registry.state != "ready":
            send_json(resp, {"status": registry.state, "reason": registry.reason}, 503)
            if registry.state == "loading":
                resp.set_header("Retry-After", "5")
        else:
            models = registry.models()
            generators = {m.name: asdict(m.generator.stats()) for m in models if m.generator is not None}
            send_json(resp, {"status": "ok", "models": [m.name for m in models], "pid": os.getpid(), "generators": generators})

    on_head = on_get


class Metrics:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, content_type = self.ctx.metrics.render()
        resp.content_type = content_type
        resp.data = body


class OpenAPI:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, self.document)


class Root:
    """`GET /`: Ollama clients probe it to see whether a server is up."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; charset=utf-8"
        resp.text = "appliance is running (OpenAI API under /v1, Ollama API under /api)"

    on_head = on_get
