"""Scale-out on Ray Serve: `appliance serve --ray`.

Two data paths (`--ray-ingress`), both built here from the modules of this folder:

- **direct** (the default): `DirectReplica` (direct.py) is the application's ingress. Ray
  Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY) runs HAProxy on each proxy node and gives each
  replica an HTTP port of its own: HAProxy passes the replica's bytes to the client, no Ray hop
  per token. Every replica serves every engine. For each POST HAProxy first asks
  `ReplicaChooser` (direct.py, the ingress request router) which replica should take it:
  `AffinityRouter` (router.py) names the conversation's own replica while it has a free slot,
  else the least loaded. A replica past its own queue answers 429 in the API's dialect.
- **relay**: `EngineReplica` (replica.py), one deployment per engine, behind `Ingress`
  (ingress.py), which reads the body, picks the deployment by `model`, asks the same router
  with the affinity key, and streams the replica's answer back through Ray (a hop per chunk).
  Its lists and /health gather every deployment's answers; a request whose replica died before
  sending a byte is sent again, and a stream cut after its first byte ends with an error event
  in its own dialect, which only an intermediary that knows the dialect can write.

Autoscaling is Ray Serve's, on each replica's ongoing requests (`--ray-target-ongoing`,
between `--ray-min-replicas` and `--ray-max-replicas`); a replica that dies is replaced by
Ray's controller. Engines are not pulled, deleted or copied through the API here: each
replica serves its engine directory read-only (docs/scale-out.md). The Responses API's store is
one actor for the whole cluster (cluster_store.py). This module builds the application and runs it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import threading
from dataclasses import replace
from typing import Any

import ray
from ray import serve
from ray.serve._private import constants as serve_constants
from ray.serve.config import BackpressureConfig, RequestRouterConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from api.scaleout import DIRECT_INGRESS_ENV
from api.scaleout.cluster_store import APP_NAME, RESPONSES_ACTOR, ResponsesActor
from api.scaleout.direct import DirectReplica, ReplicaChooser
from api.scaleout.ingress import Ingress
from api.scaleout.replica import EngineReplica
from api.scaleout.router import AffinityRouter
from api.server.assemble import configure_logging
from api.settings import ServerSettings
from runtime.manifest import TASK_TEXT_GENERATION, find_engine_dirs, read_manifest

log = logging.getLogger("appliance.ray")

DIRECT_DEPLOYMENT = "engines"  # the direct path's replicas, each serving every engine
ROUTER_DEPLOYMENT = "router"  # the direct path's ingress request router (one per node with HAProxy)
# By import path: each process that routes to the replicas imports it (the appliance is installed on every node).
_ROUTER_CLASS = f"{AffinityRouter.__module__}.{AffinityRouter.__qualname__}"


# -- the application ---------------------------------------------------------------------------


def deployment_name(model: str) -> str:
    return "engine-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", model)


def _replica_settings(settings: ServerSettings) -> dict[str, str]:
    threads = settings.intra_op_threads or max(1, math.ceil(settings.ray_replica_cpus))
    return replace(settings, intra_op_threads=threads, workers=1).to_env()


def _autoscaling(settings: ServerSettings) -> dict[str, Any]:
    return {
        "min_replicas": settings.ray_min_replicas,
        "max_replicas": settings.ray_max_replicas,
        "initial_replicas": settings.ray_min_replicas,
        "target_ongoing_requests": settings.ray_target_ongoing or settings.slots,
        "upscale_delay_s": settings.ray_upscale_delay_s,
        "downscale_delay_s": settings.ray_downscale_delay_s,
        # Load is averaged over this window (longer than the metrics interval, as Ray requires).
        "look_back_period_s": max(2.0, min(settings.ray_upscale_delay_s, 10.0)),
        # Ongoing requests reported every second, not every 10 s: the delays above are
        # then what decides. (Ray 2.x deprecates the field for two environment variables,
        # RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S, but still honours it.)
        "metrics_interval_s": 1.0,
    }


def application(settings: ServerSettings) -> serve.Application:
    """The Serve application of settings.ray_ingress, over the engines under settings.engines."""
    directories = find_engine_dirs(settings.engines)
    if not directories:
        raise ValueError(f"no engines under {settings.engines}: export one first (appliance export ...)")
    if settings.ray_ingress == "direct":
        return direct_application(settings)
    return relay_application(settings, directories)


def direct_application(settings: ServerSettings) -> serve.Application:
    """Replicas that each serve every engine and answer HTTP themselves, and the router HAProxy asks."""
    server = serve.deployment(
        name=DIRECT_DEPLOYMENT,
        ray_actor_options={"num_cpus": settings.ray_replica_cpus},
        # Ray holds nothing back: the replica's own scheduler admits `--slots` per engine, queues
        # `--queue-limit` and refuses the rest in the API's dialect (429, Retry-After). Ray's own
        # limit is only the request threads' (beyond it, Ray's plain-text 429).
        max_ongoing_requests=settings.threads,
        max_queued_requests=settings.threads,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
        autoscaling_config=_autoscaling(settings),
        health_check_period_s=5,
        graceful_shutdown_timeout_s=settings.drain_timeout_s,
        # The router decides alone on this path (Ray weighs no capacity): the conversation's
        # replica while fewer than `--slots` requests run there, else the least loaded.
        request_router_config=RequestRouterConfig(request_router_class=_ROUTER_CLASS, request_router_kwargs={"overflow_at": settings.slots}),  # type: ignore[arg-type]  # Ray's pydantic stub types every field as a dict
    )(DirectReplica).bind(_replica_settings(settings), str(settings.engines))
    router = serve.deployment(name=ROUTER_DEPLOYMENT, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)(ReplicaChooser).bind(server)
    # Ray Serve's hook for an ingress request router is private in the version we pin (its
    # LLM stack's direct streaming uses it); docs/scale-out.md says so.
    return server._with_ingress_request_router(router)


def relay_application(settings: ServerSettings, directories: list[Any]) -> serve.Application:
    """A deployment per engine, and the ingress that relays each request to its engine's deployment."""
    env = _replica_settings(settings)
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
            autoscaling_config=_autoscaling(settings),
            health_check_period_s=5,
            graceful_shutdown_timeout_s=settings.drain_timeout_s,
            request_router_config=RequestRouterConfig(request_router_class=_ROUTER_CLASS),  # type: ignore[arg-type]  # as above
        )(EngineReplica)
        deployments[name] = deployment.bind(env, str(directory))
    ingress = serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max(1000, settings.threads))(Ingress)
    return ingress.bind(deployments, models, default, settings.max_body_bytes)


def serve_forever(settings: ServerSettings) -> int:
    """Join (or start) Ray, run the application on host:port, and stay until SIGTERM or SIGINT."""
    configure_logging()
    direct = settings.ray_ingress == "direct"
    if direct and not serve_constants.RAY_SERVE_ENABLE_HA_PROXY:
        # Ray Serve reads its switches once, when it is imported: the CLI sets them before.
        raise ValueError(f"--ray-ingress direct needs {' '.join(f'{k}={v}' for k, v in DIRECT_INGRESS_ENV.items())} in the environment before Ray Serve is imported")
    app = application(settings)
    # The switches go to every process Ray starts for this job (the controller, HAProxy, the
    # replicas); a cluster started with them set (`ray start`) has them already.
    runtime_env = {"env_vars": dict(DIRECT_INGRESS_ENV)} if direct else {}
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=APP_NAME, runtime_env=runtime_env)
    else:
        # Ray starts its workers at niceness 15 by default; here they are the server, at the
        # priority gunicorn's workers have (a cluster's nodes set it with `ray start`).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(namespace=APP_NAME, include_dashboard=False, runtime_env=runtime_env)
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
    # A cluster's Serve keeps the ingress it started with: a controller already running with the
    # other one is reported (docs/scale-out.md: `serve shutdown` to change it).
    serve.start(
        proxy_location=settings.ray_proxy_location, http_options={"host": settings.host, "port": settings.port},
        controller_options={"runtime_env": runtime_env},
    )
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    log.info("serving on http://%s:%d through Ray Serve (%s ingress%s)", settings.host, settings.port, settings.ray_ingress, ", HAProxy on each proxy node" if direct else "")
    stopped.wait()
    # A service manager may signal the whole process group, Ray's own processes included: the
    # application's removal is bounded, and Ray is stopped after it whatever became of it.
    # On the direct path Ray drains a replica for at least 30 s (so HAProxy stops sending to it)
    # and gives streams at least 35 s, whatever --drain-timeout says.
    limit = max(settings.drain_timeout_s, 35.0 if direct else 0.0) + 10
    log.info("shutting down: removing the application (at most %.0f s)", limit)
    remove = threading.Thread(target=serve.delete if settings.ray_address else lambda _name: serve.shutdown(), args=(APP_NAME,), daemon=True)
    remove.start()
    remove.join(limit)
    if remove.is_alive():
        log.warning("the application was not removed in time (is Ray's node still up?); stopping anyway")
    ray.shutdown()
    return 0
