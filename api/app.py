"""The Falcon WSGI application: routes, the error boundary, draining and request metrics.

`create_app(ctx)` is all a server (gunicorn, through `api.server.wsgi`) or a test needs; the
context carries the models and everything else the routes use.

Middleware, in order: CORS (answers browsers' preflights), then the boundary: API keys on
every route but /health and the chat page (api/ui/page.py), refusal while draining, and request metrics.

Errors are translated here, once, into the dialect of the route: paths under `/api/` are
Ollama's (`{"error": "..."}`), `/v1/messages` Anthropic's (`{"type": "error", "error": {...}}`),
every other path answers OpenAI's error object.
"""

from __future__ import annotations

import time
from typing import Any

import falcon

from api.anthropic import protocol as anthropic_protocol
from api.anthropic import routes as anthropic
from api.batches import routes as batches
from api.context import ServerContext, random_id
from api.cors import Cors
from api.errors import ApiError, MethodNotAllowed, RouteNotFound, Unavailable, ollama_error_body, openai_error_body
from api.extras import routes as extras
from api.framing import describe_error
from api.models.residency import RequestLeases
from api.ollama import routes as ollama
from api.openai import routes as openai
from api.openapi import openapi_document
from api.rerank import routes as rerank
from api.ui import page as ui
from api.wire import encode
from runtime.errors import ApplianceError

OLLAMA_PREFIX = "/api/"


def routes(ctx: ServerContext) -> list[tuple[str, Any]]:
    """Every route of the server with its resource (the OpenAPI document describes each)."""
    chat_page, chat_assets = ui.resources()
    return [
        ("/v1/chat/completions", openai.ChatCompletions(ctx)),
        ("/v1/completions", openai.Completions(ctx)),
        ("/v1/responses", openai.Responses(ctx)),
        ("/v1/responses/{response_id}", openai.StoredResponse(ctx)),
        ("/v1/responses/{response_id}/input_items", openai.ResponseInputItems(ctx)),
        ("/v1/embeddings", openai.Embeddings(ctx)),
        ("/v1/files", batches.Files(ctx)),
        ("/v1/files/{file_id}", batches.File(ctx)),
        ("/v1/files/{file_id}/content", batches.FileContent(ctx)),
        ("/v1/batches", batches.Batches(ctx)),
        ("/v1/batches/{batch_id}", batches.BatchResource(ctx)),
        ("/v1/batches/{batch_id}/cancel", batches.BatchCancel(ctx)),
        ("/v1/rerank", rerank.Rerank(ctx)),
        ("/v2/rerank", rerank.Rerank(ctx)),
        ("/rerank", rerank.Rerank(ctx)),
        ("/v1/messages", anthropic.Messages(ctx)),
        ("/v1/messages/count_tokens", anthropic.CountTokens(ctx)),
        ("/v1/models", _ByDialect(openai.Models(ctx), anthropic.Models(ctx))),
        ("/v1/models/{model_id}", _ByDialect(openai.Model(ctx), anthropic.Models(ctx))),
        ("/api/generate", ollama.Generation(ctx, ollama.GENERATE)),
        ("/api/chat", ollama.Generation(ctx, ollama.CHAT)),
        ("/api/embed", ollama.Embed(ctx)),
        ("/api/embeddings", ollama.Embeddings(ctx)),
        ("/api/tags", ollama.Tags(ctx)),
        ("/api/show", ollama.Show(ctx)),
        ("/api/ps", ollama.Ps(ctx)),
        ("/api/pull", ollama.Pull(ctx)),
        ("/api/delete", ollama.Delete(ctx)),
        ("/api/copy", ollama.Copy(ctx)),
        ("/api/version", ollama.Version()),
        ("/tokenize", extras.Tokenize(ctx)),
        ("/detokenize", extras.Detokenize(ctx)),
        ("/extras/tokenize", extras.Tokenize(ctx)),
        ("/extras/tokenize/count", extras.Tokenize(ctx, count_only=True)),
        ("/extras/detokenize", extras.Detokenize(ctx)),
        ("/health", extras.Health(ctx)),
        ("/metrics", extras.Metrics(ctx)),
        ("/openapi.json", extras.OpenAPI(openapi_document(ctx.settings, authenticated=ctx.auth.enabled))),
        (ui.PAGE_PATH, chat_page),
        *chat_assets,
        ("/", extras.Root(chat_page)),
    ]


class _ByDialect:
    """GET /v1/models is both OpenAI's and Anthropic's: an `anthropic-version` header picks Anthropic's shape."""

    def __init__(self, openai_resource: Any, anthropic_resource: Any) -> None:
        self.openai, self.anthropic = openai_resource, anthropic_resource

    def on_get(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        (self.anthropic if anthropic.speaks_anthropic(req) else self.openai).on_get(req, resp, **params)


# Answered without an API key: load balancers and orchestrators probe /health; a browser loads the
# chat page and its assets (navigating, it cannot send a bearer header; the page's API calls do).
UNAUTHENTICATED_PATHS = frozenset({"/health", *ui.PUBLIC_PATHS})


class _Boundary:
    """Middleware: check the API key; refuse new work while draining; count every answer in the metrics."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        # The models this request looks up are held until its answer is sent (api/models/residency.py).
        req.context.leases = RequestLeases()
        if req.path not in UNAUTHENTICATED_PATHS and not req.context.get("preflight") and not ui.wants_page(req):
            self.ctx.auth.check(req.get_header("Authorization"), req.get_header("X-Api-Key"))
        if self.ctx.draining and req.path != "/health":
            raise Unavailable("the server is shutting down; retry on another instance", headers={"Retry-After": "10", "Connection": "close"})

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool) -> None:
        leases = req.context.get("leases")
        if leases is not None:
            if resp.stream is not None:
                resp.stream = leases.until_closed(resp.stream)  # given back when the server has sent (or dropped) it
            else:
                leases.release()
        route = req.uri_template or "unmatched"
        self.ctx.metrics.requests.labels(route, req.method, resp.status[:3] if isinstance(resp.status, str) else str(resp.status)).inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            self.ctx.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


def _send_error(req: falcon.Request, resp: falcon.Response, status: int, message: str, param: str | None, code: str | None) -> None:
    body: object
    if req.path.startswith(OLLAMA_PREFIX):
        body = ollama_error_body(message)
    elif anthropic.speaks_anthropic(req):
        request_id = resp.get_header(anthropic.REQUEST_ID_HEADER) or random_id("req_")
        resp.set_header(anthropic.REQUEST_ID_HEADER, request_id)
        body = anthropic_protocol.error_body(status, message, param, request_id)
    else:
        body = openai_error_body(status, message, param, code)
    resp.status = status
    resp.content_type = "application/json"
    resp.data = encode(body)
    resp.stream = None


def create_app(ctx: ServerContext) -> falcon.App:
    app = falcon.App()
    app.add_middleware(Cors(ctx.settings.cors_origins))
    app.add_middleware(_Boundary(ctx))
    app.req_options.strip_url_path_trailing_slash = True
    for path, resource in routes(ctx):
        app.add_route(path, resource)

    def on_error(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]) -> None:
        if isinstance(exc, falcon.HTTPError):
            exc = _from_falcon(req, exc)
        status, message, param, code = describe_error(exc)
        if status >= 500 and not isinstance(exc, ApplianceError):
            ctx.log.exception("request %s %s failed", req.method, req.path, exc_info=exc)
        elif status >= 500:
            ctx.log.error("request %s %s failed: %s", req.method, req.path, message)
        for name, value in getattr(exc, "headers", {}).items():
            resp.set_header(name, value)
        _send_error(req, resp, status, message, param, code)

    # Later handlers take precedence for their own types: the generic one goes first.
    app.add_error_handler(Exception, on_error)
    app.add_error_handler(falcon.HTTPError, on_error)
    app.add_error_handler(ApplianceError, on_error)  # ApiError is one
    return app


def _from_falcon(req: falcon.Request, exc: falcon.HTTPError) -> ApiError:
    """Falcon's own errors (no route, wrong method, unreadable request) in our terms."""
    if isinstance(exc, falcon.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"{req.method} is not allowed on {req.path}", headers=dict(exc.headers or {}))
    if exc.status_code == 404:
        return RouteNotFound(f"no route {req.method} {req.path}; see /openapi.json for the routes this server has")
    error = ApiError(exc.description or exc.title or "request failed")
    error.status, error.code = exc.status_code, None
    return error
