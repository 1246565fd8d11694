"""Scale-out on Ray Serve: `appliance serve --ray`.

One Serve application, three parts:

- `EngineReplica`, one deployment per engine directory. Each replica assembles the same
  server gunicorn's workers run (api/assemble.py: routes, errors, keys, scheduler) around
  its one engine, and answers requests by running that WSGI app on a thread of its own,
  chunk by chunk, so a stream leaves the replica as its tokens are made.
- `AffinityRouter`, the replicas' request router: a request whose prompt starts like an
  earlier one (api/affinity.py) goes to the replica ranked first for its key, where that
  prefix is cached; when that replica has no room (Ray's `max_ongoing_requests`), the least
  loaded of the others with room takes it. With every replica full, requests wait in
  Ray's queue up to `--queue-limit`, then get 429.
- `Ingress`, the HTTP entry: it reads the body, picks the deployment by `model`, asks the
  router with the request's affinity key, and streams the replica's answer back as is. The
  lists (/v1/models, /api/tags, /api/ps) and /health gather every deployment's answers. A
  request whose replica died before sending a byte is sent again (nothing was lost); a
  stream cut after its first byte ends with an error event in its own dialect.

Autoscaling is Ray Serve's, on each replica's ongoing requests (`--ray-target-ongoing`,
between `--ray-min-replicas` and `--ray-max-replicas`); a replica that dies is replaced by
Ray's controller. Engines are not pulled, deleted or copied through the API here: each
replica serves its engine directory read-only (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.affinity import affinity_key, rank
from api.assemble import assemble, configure_logging
from api.errors import ApiError, BodyTooLarge, Overloaded, Unavailable, ollama_error_body, openai_error_body
from api.framing import describe_error, ollama_error_line, openai_error_frames
from api.response_store import ResponseStore, StoredResponse
from api.settings import ServerSettings
from api.wire import encode
from runtime.manifest import TASK_TEXT_GENERATION, find_engine_dirs, read_manifest

log = logging.getLogger("appliance.ray")

APP_NAME = "appliance"
REPLICA_HEADER = "x-appliance-replica"  # which replica answered: `<replica id> <node id> <pid>`
# Lists and health gathered from every deployment, and the key under which each lists its models.
GATHERED_LISTS = {"/v1/models": "data", "/api/tags": "models", "/api/ps": "models"}
# A replica that died before its answer's first byte: the request is sent again this many times.
RESEND_LIMIT = 3
_DEAD_REPLICA = (RayActorError, ActorUnavailableError, DeploymentUnavailableError)
# The Responses API's store, one for the whole cluster: a named actor on the node that runs `serve`.
RESPONSES_ACTOR = "appliance-responses"


# -- the stored responses, shared by every replica ----------------------------------------------


class ResponsesActor:
    """The bounded store of api/response_store.py, in one actor: any replica continues any response."""

    def __init__(self, path: str, max_records: int, ttl_s: float) -> None:
        self.store = ResponseStore(path or ":memory:", max_records=max_records, ttl_s=ttl_s)

    def put(self, record: StoredResponse) -> None:
        self.store.put(record)

    def get(self, response_id: str) -> StoredResponse | None:
        return self.store.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self.store.delete(response_id)


class ClusterResponseStore(ResponseStore):
    """A replica's view of the ResponsesActor: the same calls, answered by the actor."""

    def __init__(self, actor: Any, max_records: int) -> None:  # no database of its own
        self.actor = actor
        self.max_records = max_records

    def put(self, record: StoredResponse) -> None:
        if self.enabled:
            ray.get(self.actor.put.remote(record))

    def get(self, response_id: str) -> StoredResponse | None:
        return ray.get(self.actor.get.remote(response_id))

    def delete(self, response_id: str) -> bool:
        return bool(ray.get(self.actor.delete.remote(response_id)))

    def close(self) -> None:
        """Nothing of the replica's to close: the actor belongs to the `serve` process, which ends it."""


# -- the replicas' router ---------------------------------------------------------------------


class AffinityRouter(RequestRouter):
    """Prefix affinity first, queue length after: the replica ranked first for the request's key.

    `choose_replicas` returns ranks: the key's own replica alone first, then the others. Ray
    tries a rank's replicas least loaded first and passes to the next rank when all of them
    are full, which is the balancing: a saturated replica's conversations overflow to the
    least loaded of the others, and requests without a key go to the least loaded of all.
    """

    async def choose_replicas(self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = None if pending_request is None else pending_request.kwargs.get("affinity")
        if not key:
            return [list(candidate_replicas)]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        ranked = [by_id[unique] for unique in rank(key, by_id)]
        return [[ranked[0]], ranked[1:]] if len(ranked) > 1 else [ranked]


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

    async def handle(self, request: dict[str, Any], body: bytes, affinity: str | None = None) -> AsyncIterator[Any]:
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


# -- the ingress -------------------------------------------------------------------------------


def error_response(path: str, error: ApiError) -> Response:
    """An error answered in the route's dialect, as the app would (Ollama's under /api/)."""
    status, message, param, code = describe_error(error)
    body = ollama_error_body(message) if path.startswith("/api/") else openai_error_body(status, message, param, code)
    return Response(encode(body), status_code=status, media_type="application/json", headers=error.headers)


def stream_error(content_type: str, error: ApiError) -> bytes:
    """The frame that ends a stream cut by a dead replica, in the stream's own format."""
    if content_type.startswith("text/event-stream"):
        return openai_error_frames(error)
    if "ndjson" in content_type:
        return ollama_error_line(error)
    return b""  # a plain body cannot say more than ending short


class Ingress:
    """The HTTP entry of the application: forwards each request to its engine's deployment."""

    def __init__(self, deployments: dict[str, Any], models: dict[str, str], default: str, max_body_bytes: int) -> None:
        self.handles = deployments  # deployment name -> handle
        self.models = models  # model name -> deployment name
        self.default = default  # the deployment that answers requests naming no model
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        # The body is read here whole (the model and the affinity key are in it), so its limit is kept here too.
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return error_response(path, BodyTooLarge(f"the request body has {declared} bytes; the limit is {self.max_body_bytes}"))
        parts, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > self.max_body_bytes:
                return error_response(path, BodyTooLarge(f"the request body is larger than the limit of {self.max_body_bytes} bytes"))
            parts.append(part)
        body = b"".join(parts)
        forwarded = {
            "method": request.method,
            "path": path,
            "query_string": request.url.query,
            "headers": [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.scope["headers"]],
            "scheme": request.url.scheme,
            "server": request.scope.get("server"),
            "client": request.scope.get("client"),
        }
        if request.method == "GET" and (path in GATHERED_LISTS or path == "/health"):
            return await self._gathered(path, forwarded)
        parsed = _json_object(body)
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
                yield stream_error(content_type, Unavailable(f"the replica answering this request stopped ({type(exc).__name__}); send the request again"))
            except RuntimeError as exc:  # the app raised inside the replica
                yield stream_error(content_type, Unavailable(f"the replica could not finish this answer: {exc}"))
            finally:
                answer.cancel()  # the client left early: the replica stops generating

        response = StreamingResponse(chunks(), status_code=start["status"])
        # The app's headers as it sent them, repeated names included; the length is the proxy's to set.
        response.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in start["headers"] if name.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        return response

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
                {"pid": document.get("pid"), "models": document.get("models", []), "generators": document.get("generators", {})} for document in documents
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


def _json_object(body: bytes) -> dict[str, Any]:
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


# -- the application ---------------------------------------------------------------------------


def deployment_name(model: str) -> str:
    return "engine-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", model)


def application(settings: ServerSettings) -> serve.Application:
    """The Serve application: a deployment per engine under settings.engines, and the ingress."""
    directories = find_engine_dirs(settings.engines)
    if not directories:
        raise ValueError(f"no engines under {settings.engines}: export one first (appliance export ...)")
    threads = settings.intra_op_threads or max(1, math.ceil(settings.ray_replica_cpus))
    replica_settings = replace(settings, intra_op_threads=threads, workers=1)
    env = replica_settings.to_env()
    target = settings.ray_target_ongoing or settings.slots
    manifests = [(directory, read_manifest(directory)) for directory in directories]
    models = {manifest.name: deployment_name(manifest.name) for _, manifest in manifests}
    # Requests that name no model (the chat page, /metrics, /openapi.json) go to the first text engine.
    texts = [manifest.name for _, manifest in manifests if manifest.task == TASK_TEXT_GENERATION]
    default = models[(texts or [manifests[0][1].name])[0]]
    deployments: dict[str, serve.Application] = {}
    for directory, manifest in manifests:
        name = models[manifest.name]
        deployment = serve.deployment(
            name=name,
            ray_actor_options={"num_cpus": settings.ray_replica_cpus},
            # A replica takes as many requests as it has slots and lets its own queue hold no more:
            # the rest wait in Ray's queue, from where any replica with room may take them.
            max_ongoing_requests=settings.slots,
            max_queued_requests=settings.queue_limit,
            autoscaling_config={
                "min_replicas": settings.ray_min_replicas,
                "max_replicas": settings.ray_max_replicas,
                "initial_replicas": settings.ray_min_replicas,
                "target_ongoing_requests": target,
                "upscale_delay_s": settings.ray_upscale_delay_s,
                "downscale_delay_s": settings.ray_downscale_delay_s,
                # Load is averaged over this window (longer than the metrics interval, as Ray requires).
                "look_back_period_s": max(2.0, min(settings.ray_upscale_delay_s, 10.0)),
                # Ongoing requests reported every second, not every 10 s: the delays above are
                # then what decides. (Ray 2.x deprecates the field for two environment variables,
                # RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S, but still honours it.)
                "metrics_interval_s": 1.0,
            },
            health_check_period_s=5,
            graceful_shutdown_timeout_s=settings.drain_timeout_s,
            # By import path: each process that routes to the replicas imports it (the appliance is installed on every node).
            request_router_config=RequestRouterConfig(request_router_class=f"{__name__}.AffinityRouter"),  # type: ignore[arg-type]  # Ray's pydantic stub types every field as a dict
        )(EngineReplica)
        deployments[name] = deployment.bind(env, str(directory))
    ingress = serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max(1000, settings.threads))(Ingress)
    return ingress.bind(deployments, models, default, settings.max_body_bytes)


def serve_forever(settings: ServerSettings) -> int:
    """Join (or start) Ray, run the application on host:port, and stay until SIGTERM or SIGINT."""
    configure_logging()
    app = application(settings)
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=APP_NAME)
    else:
        ray.init(namespace=APP_NAME, include_dashboard=False)
    # From here on a SIGTERM or SIGINT stops the application in order (Ray's own handler, set by
    # ray.init, would end this process at once), even one that comes while it starts.
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    # Owned by this process: it lives as long as `serve` runs (a restart starts an empty store).
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    store = ray.remote(ResponsesActor).options(name=RESPONSES_ACTOR, namespace=APP_NAME, num_cpus=0, max_concurrency=32, scheduling_strategy=here)
    actor: Any = store.remote(settings.response_store, settings.response_store_max, settings.response_store_ttl_s)
    ray.get(actor.get.remote(""))  # up before any replica looks it up
    serve.start(proxy_location=settings.ray_proxy_location, http_options={"host": settings.host, "port": settings.port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    log.info("serving on http://%s:%d through Ray Serve", settings.host, settings.port)
    stopped.wait()
    # A service manager may signal the whole process group, Ray's own processes included: the
    # application's removal is bounded, and Ray is stopped after it whatever became of it.
    log.info("shutting down: removing the application (at most %.0f s)", settings.drain_timeout_s + 10)
    remove = threading.Thread(target=serve.delete if settings.ray_address else lambda _name: serve.shutdown(), args=(APP_NAME,), daemon=True)
    remove.start()
    remove.join(settings.drain_timeout_s + 10)
    if remove.is_alive():
        log.warning("the application was not removed in time (is Ray's node still up?); stopping anyway")
    ray.shutdown()
    return 0
