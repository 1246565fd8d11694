"""The direct path: replicas that answer HTTP themselves behind HAProxy, and the router HAProxy asks.

`DirectReplica` is the application's ingress deployment. With Ray Serve's HAProxy ingress each
replica listens on a port of its own; HAProxy (one per node) sends it requests and passes its
bytes to the client, so a streamed token crosses no Ray hop. Every replica serves every engine
(as a gunicorn worker does): HAProxy routes by path, not by the body's model.

`ReplicaChooser` is the ingress request router: for each POST, HAProxy sends it the body
(`POST /internal/route`) and sends the request to the replica it names. It reads the
affinity key from the body and lets `AffinityRouter` (router.py) pick: the conversation's own
replica while it has a free slot, else the least loaded. Requests other than POSTs (lists,
/health) go to the least connected replica, HAProxy's own balancing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.errors import ApiError
from api.scaleout.affinity import affinity_key
from api.scaleout.ingress import error_response, forwarded_request, json_object, read_body, stream_error, streamed_answer
from api.scaleout.replica import EngineReplica

log = logging.getLogger("appliance.ray")

ROUTE_PATH = "/internal/route"  # where HAProxy asks for a replica (Ray Serve's contract)
# How long the router waits for a replica to exist (all dead, or none started yet) before
# HAProxy is told it has none (HAProxy gives up on the router after 5 s by default).
CHOOSE_TIMEOUT_S = 4.0


# -- a replica that answers HTTP itself ---------------------------------------------------------


class DirectReplica(EngineReplica):
    """Every engine's server, answering the HTTP requests HAProxy sends it, streamed as they are made."""

    async def __call__(self, request: Request) -> Response:
        body = await read_body(request, self.settings.max_body_bytes)
        if isinstance(body, Response):
            return body
        path = request.url.path
        answer = self.handle(forwarded_request(request), body)
        try:
            start = await answer.__anext__()
        except RuntimeError as exc:  # the bridge broke before the app answered (the app answers its own errors)
            return error_response(path, ApiError(f"internal error in the replica ({exc}); the server log has the details"))
        if path == "/health" and start["status"] == 200:
            return self._health(start, b"".join([chunk async for chunk in answer]))
        content_type = next((value for name, value in start["headers"] if name.lower() == "content-type"), "")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer:
                    yield chunk
            except RuntimeError as exc:  # the app raised mid-answer: end the stream in its own format
                yield stream_error(content_type, ApiError(f"the replica could not finish this answer: {exc}"), path)
            finally:
                await answer.aclose()  # the client left early: the app's iterable is closed, the generation ends

        return streamed_answer(start, chunks())

    def _health(self, start: dict[str, Any], body: bytes) -> Response:
        """This replica's /health, in the relay path's shape: HAProxy sends each GET to one replica."""
        document = json.loads(body)
        document["replica"] = self.identity
        document["replicas"] = [{
            "replica": self.identity, "pid": document.get("pid"), "models": document.get("models", []),
            "generators": document.get("generators", {}), "embedders": document.get("embedders", {}),
        }]
        headers = {name: value for name, value in start["headers"] if name.lower() not in ("content-length", "content-type")}
        return JSONResponse(document, status_code=start["status"], headers=headers)


# -- the router HAProxy asks ---------------------------------------------------------------------


class ReplicaChooser:
    """Answers HAProxy's `POST /internal/route` with the replica that should take the request."""

    def __init__(self, server: DeploymentHandle) -> None:
        self.server = server

    async def __call__(self, request: Request) -> Response:
        if request.url.path == "/health":
            return JSONResponse({"status": "ok"})
        if request.method != "POST" or request.url.path != ROUTE_PATH:
            return JSONResponse({"detail": f"not found: {request.method} {request.url.path}"}, status_code=404)
        # A body longer than HAProxy's routing buffer comes cut (x-body-truncated): it does not
        # parse, has no key, and goes to the least loaded replica.
        key = affinity_key(None, json_object(await request.body()))
        try:
            return await asyncio.wait_for(self._choose(key), CHOOSE_TIMEOUT_S)
        except (TimeoutError, RuntimeError, DeploymentUnavailableError) as exc:
            log.warning("no replica to route to: %s", exc or type(exc).__name__)
            return JSONResponse({"detail": f"no replica can take the request: {exc or type(exc).__name__}"}, status_code=503)

    async def _choose(self, key: str | None) -> Response:
        # `_reserve=False`: pick only, the request itself goes through HAProxy (as Ray Serve's own
        # LLM router does); `selection._replica` is how that router reads the replica's port.
        async with self.server.choose_replica(affinity=key, _reserve=False) as selection:
            replica = selection._replica
            endpoint = replica.backend_http_endpoint
            if endpoint is None:
                raise RuntimeError(f"replica {selection.replica_id} has no HTTP port")
            return JSONResponse({"host": endpoint[0], "port": endpoint[1], "replica_id": replica.replica_id.to_full_id_str()})
