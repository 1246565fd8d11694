"""The HTTP entry of the Ray application: picks the deployment by the body's model and streams its answer back."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.anthropic.protocol import error_body as anthropic_error_body
from api.anthropic.protocol import sse_event as anthropic_sse_event
from api.anthropic.routes import PATH_PREFIX as ANTHROPIC_PATHS
from api.errors import ApiError, BodyTooLarge, Overloaded, Unavailable, ollama_error_body, openai_error_body
from api.framing import describe_error, ollama_error_line, openai_error_frames
from api.scaleout.affinity import affinity_key
from api.wire import encode

log = logging.getLogger("appliance.ray")

# Lists and health gathered from every deployment, and the key under which each lists its models.
GATHERED_LISTS = {"/v1/models": "data", "/api/tags": "models", "/api/ps": "models"}
# A replica that died before its answer's first byte: the request is sent again this many times.
RESEND_LIMIT = 3
_DEAD_REPLICA = (RayActorError, ActorUnavailableError, DeploymentUnavailableError)


# -- the ingress -------------------------------------------------------------------------------


def error_response(path: str, error: ApiError) -> Response:
    """An error answered in the route's dialect, as the app would (Ollama's under /api/, Anthropic's under /v1/messages)."""
    status, message, param, code = describe_error(error)
    body: object
    if path.startswith("/api/"):
        body = ollama_error_body(message)
    elif path.startswith(ANTHROPIC_PATHS):
        body = anthropic_error_body(status, message, param)
    else:
        body = openai_error_body(status, message, param, code)
    return Response(encode(body), status_code=status, media_type="application/json", headers=error.headers)


def stream_error(content_type: str, error: ApiError, path: str = "") -> bytes:
    """The frame that ends a stream cut by a dead replica, in the stream's own format."""
    if content_type.startswith("text/event-stream") and path.startswith(ANTHROPIC_PATHS):
        status, message, param, _ = describe_error(error)
        return anthropic_sse_event(anthropic_error_body(status, message, param))
    if content_type.startswith("text/event-stream"):
        return openai_error_frames(error)
    if "ndjson" in content_type:
        return ollama_error_line(error)
    return b""  # a plain body cannot say more than ending short


async def read_body(request: Request, limit: int) -> bytes | Response:
    """The request's whole body, or the 413 that refuses it (read here: the model and the affinity key are in it)."""
    path = request.url.path
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return error_response(path, BodyTooLarge(f"the request body has {declared} bytes; the limit is {limit}"))
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            return error_response(path, BodyTooLarge(f"the request body is larger than the limit of {limit} bytes"))
        parts.append(part)
    return b"".join(parts)


def forwarded_request(request: Request) -> dict[str, Any]:
    """What a replica needs of an HTTP request to run it through its WSGI app (replica.wsgi_environ)."""
    return {
        "method": request.method,
        "path": request.url.path,
        "query_string": request.url.query,
        "headers": [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.scope["headers"]],
        "scheme": request.url.scheme,
        "server": request.scope.get("server"),
        "client": request.scope.get("client"),
    }


def streamed_answer(start: dict[str, Any], chunks: AsyncIterator[bytes]) -> StreamingResponse:
    """A replica's answer as the HTTP server sends it: its status, its headers as the app set them, its chunks as they come."""
    response = StreamingResponse(chunks, status_code=start["status"])
    # Repeated header names kept; the length and framing are the HTTP server's to set.
    response.raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in start["headers"] if name.lower() not in ("content-length", "transfer-encoding", "connection")
    ]
    return response


class Ingress:
    """The HTTP entry of the application: forwards each request to its engine's deployment."""

    def __init__(self, deployments: dict[str, Any], models: dict[str, str], default: str, max_body_bytes: int) -> None:
        self.handles = deployments  # deployment name -> handle
        self.models = models  # model name -> deployment name
        self.default = default  # the deployment that answers requests naming no model
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        body = await read_body(request, self.max_body_bytes)
        if isinstance(body, Response):
            return body
        forwarded = forwarded_request(request)
        if request.method == "GET" and (path in GATHERED_LISTS or path == "/health"):
            return await self._gathered(path, forwarded)
        parsed = json_object(body)
        deployment = self.models.get(str(parsed.get("model") or parsed.get("name") or _path_model(path)), self.default)
        return await self._forward(deployment, path, forwarded, body, affinity_key(path, parsed))

    async def _forward(self, deployment: str, path: str, forwarded: dict[str, Any], body: bytes, affinity: str | None) -> Response:
        handle = self.handles[deployment].options(method_name="handle", stream=True)
        for attempt in range(RESEND_LIMIT + 1):
            answer = handle.remote(forwarded, body, affinity=affinity)
            try:
                start = await answer.__anext__()
                # Wait for the first chunk too: until it is sent, a dead replica costs nothing.
                first = await _next_or_none(answer)
                break
            except BackPressureError:
                return error_response(path, Overloaded(f"every replica of {deployment} is busy and its queue is full; retry shortly", headers={"Retry-After": "1"}))
            except _DEAD_REPLICA as exc:
                answer.cancel()
                log.warning("replica of %s died before answering (%s); sending the request again (%d)", deployment, type(exc).__name__, attempt + 1)
            except RuntimeError as exc:  # the replica's bridge broke (the app answers its own errors)
                log.error("replica of %s failed before answering: %s", deployment, exc)
                return error_response(path, ApiError(f"internal error in the replica ({type(exc).__name__}); the server log has the details"))
        else:
            return error_response(path, Unavailable(f"no replica of {deployment} could answer (it died {RESEND_LIMIT + 1} times); retry shortly", headers={"Retry-After": "5"}))
        content_type = next((value for name, value in start["headers"] if name.lower() == "content-type"), "")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    yield first
                async for chunk in answer:
                    yield chunk
            except _DEAD_REPLICA as exc:
                log.warning("replica of %s died mid-answer: %s", deployment, type(exc).__name__)
                yield stream_error(content_type, Unavailable(f"the replica answering this request stopped ({type(exc).__name__}); send the request again"), path)
            except RuntimeError as exc:  # the app raised inside the replica
                yield stream_error(content_type, Unavailable(f"the replica could not finish this answer: {exc}"), path)
            finally:
                answer.cancel()  # the client left early: the replica stops generating

        return streamed_answer(start, chunks())

    async def _gathered(self, path: str, forwarded: dict[str, Any]) -> Response:
        """/health and the model lists from every deployment: one answer, or the first refusal as is."""
        answers = await asyncio.gather(*(self._whole(name, forwarded) for name in self.handles))
        for status, headers, body in answers:
            if status != 200:
                return Response(body, status_code=status, headers={k: v for k, v in headers if k.lower() != "content-length"})
        documents = [json.loads(body) for _, _, body in answers]
        merged = documents[0]
        if path == "/health":
            merged = {"status": "ok", "models": [name for document in documents for name in document.get("models", [])], "replicas": [
                {"pid": document.get("pid"), "models": document.get("models", []), "generators": document.get("generators", {}), "embedders": document.get("embedders", {})} for document in documents
            ]}
        else:
            merged[GATHERED_LISTS[path]] = [item for document in documents for item in document.get(GATHERED_LISTS[path], [])]
        return Response(json.dumps(merged), status_code=200, media_type="application/json")

    async def _whole(self, deployment: str, forwarded: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        handle = self.handles[deployment].options(method_name="handle", stream=True)
        answer = handle.remote(forwarded, b"")
        try:
            start = await answer.__anext__()
            body = b"".join([chunk async for chunk in answer])
        except (*_DEAD_REPLICA, RuntimeError) as exc:
            error = error_response(forwarded["path"], Unavailable(f"{deployment} did not answer ({type(exc).__name__}); retry shortly", headers={"Retry-After": "5"}))
            return error.status_code, [(k, v) for k, v in error.headers.items()], bytes(error.body)
        return start["status"], start["headers"], body


def json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body) if body else {}
    except ValueError:
        return {}  # the replica answers the syntax error in its own words
    return value if isinstance(value, dict) else {}


def _path_model(path: str) -> str:
    """A model named in the path (/v1/models/{id})."""
    return path.removeprefix("/v1/models/") if path.startswith("/v1/models/") else ""


async def _next_or_none(answer: Any) -> bytes | None:
    try:
        return await answer.__anext__()
    except StopAsyncIteration:
        return None
