"""A replica: the appliance's own server (api/server/assemble.py) for one engine (the relay path) or all (the direct path)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import serve

from api.scaleout.cluster_store import APP_NAME, RESPONSES_ACTOR, ClusterResponseStore
from api.server.assemble import assemble, configure_logging
from api.settings import ServerSettings

log = logging.getLogger("appliance.ray")

REPLICA_HEADER = "x-appliance-replica"  # which replica answered: `<replica id> <node id> <pid>`


# -- a replica: one engine's server -----------------------------------------------------------


def wsgi_environ(request: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """The WSGI environ of a request the ingress forwarded (method, path, query, headers, peers)."""
    host, port = request.get("server") or ("127.0.0.1", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": request["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": request.get("query_string", ""),
        "SERVER_NAME": str(host),
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": (request.get("client") or ("127.0.0.1", 0))[0],
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in request.get("headers", ()):
        key = name.upper().replace("-", "_")
        if key == "CONTENT_LENGTH":
            continue
        if key != "CONTENT_TYPE":
            key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class EngineReplica:
    """One replica of one engine: the appliance's own server, answering forwarded requests."""

    def __init__(self, settings_env: dict[str, str], engine: str) -> None:
        configure_logging()
        settings = replace(ServerSettings.from_env(settings_env), engines=Path(engine), read_only_engines=True)
        self.settings = settings
        responses = ClusterResponseStore(ray.get_actor(RESPONSES_ACTOR, namespace=APP_NAME), settings.response_store_max)
        self.server = assemble(settings, responses, builds=False)
        self.server.load_in_background()
        registry = self.server.context.registry
        registry.wait()
        if registry.state != "ready":
            raise RuntimeError(f"the engine {engine} did not load: {registry.reason}")
        context = serve.get_replica_context()
        self.identity = f"{context.replica_id.unique_id} {ray.get_runtime_context().get_node_id()} {os.getpid()}"
        log.info("replica %s serves %s", self.identity, engine)

    def check_health(self) -> None:
        """Ray's health check: a replica whose engine failed is replaced."""
        registry = self.server.context.registry
        if registry.state == "failed":
            raise RuntimeError(f"the engine failed: {registry.reason}")

    async def handle(self, request: dict[str, Any], body: bytes, affinity: str | None = None) -> AsyncGenerator[Any, None]:
        """Run the request through the app: yields its start ({status, headers}), then its body's chunks.

        The app runs on a thread of this request (a stream blocks between tokens); chunks cross
        to the event loop as they come. When the caller goes away (Ray cancels this generator),
        the thread stops at its next chunk and closes the app's iterable, which ends the
        generation and frees its slot.
        """
        loop = asyncio.get_running_loop()
        pending: deque[tuple[str, Any]] = deque()
        arrived = asyncio.Event()
        stop = threading.Event()
        environ = wsgi_environ(request, body)

        def arrive(item: tuple[str, Any]) -> None:
            pending.append(item)
            arrived.set()

        def put(kind: str, value: Any = None) -> None:
            loop.call_soon_threadsafe(arrive, (kind, value))

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            put("start", {"status": int(status.split(" ", 1)[0]), "headers": [*headers, (REPLICA_HEADER, self.identity)]})
            return lambda chunk: put("body", bytes(chunk))

        def run() -> None:
            try:
                iterable = self.server.application(environ, start_response)
                try:
                    for chunk in iterable:
                        if stop.is_set():
                            break
                        if chunk:
                            put("body", bytes(chunk))
                finally:
                    close = getattr(iterable, "close", None)
                    if close is not None:
                        close()
                put("end")
            except BaseException as exc:  # reported to the ingress as a broken answer
                log.exception("request %s %s failed in the replica", request["method"], request["path"])
                put("error", f"{type(exc).__name__}: {exc}")

        threading.Thread(target=run, name="ray-request", daemon=True).start()
        try:
            while True:
                if not pending:
                    arrived.clear()
                    await arrived.wait()
                kind, value = pending.popleft()
                if kind == "body":
                    # Chunks made while the last one crossed go as one: each yield is a message
                    # through Ray, and a busy replica makes a token per stream per step.
                    parts = [value]
                    while pending and pending[0][0] == "body":
                        parts.append(pending.popleft()[1])
                    yield b"".join(parts)
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise RuntimeError(value)
                yield value
        finally:
            stop.set()
