"""Scale-out on Ray Serve: `appliance serve --ray`.

One Serve application, three parts, each in a module of this folder:

- `EngineReplica` (replica.py), one deployment per engine directory. Each replica assembles the same
  server gunicorn's workers run (api/server/assemble.py: routes, errors, keys, scheduler) around
  its one engine, and answers requests by running that WSGI app on a thread of its own,
  chunk by chunk, so a stream leaves the replica as its tokens are made.
- `AffinityRouter` (router.py), the replicas' request router: a request whose prompt starts like an
  earlier one (api/scaleout/affinity.py) goes to the replica ranked first for its key, where that
  prefix is cached; when that replica has no room (Ray's `max_ongoing_requests`), the least
  loaded of the others with room takes it. With every replica full, requests wait in
  Ray's queue up to `--queue-limit`, then get 429.
- `Ingress` (ingress.py), the HTTP entry: it reads the body, picks the deployment by `model`, asks the
  router with the request's affinity key, and streams the replica's answer back as is. The
  lists (/v1/models, /api/tags, /api/ps) and /health gather every deployment's answers. A
  request whose replica died before sending a byte is sent again (nothing was lost); a
  stream cut after its first byte ends with an error event in its own dialect.

Autoscaling is Ray Serve's, on each replica's ongoing requests (`--ray-target-ongoing`,
between `--ray-min-replicas` and `--ray-max-replicas`); a replica that dies is replaced by
Ray's controller. Engines are not pulled, deleted or copied through the API here: each
replica serves its engine directory read-only (docs/scale-out.md). The Responses API's store is
one actor for the whole cluster (cluster_store.py). This module builds the application and runs it.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
from dataclasses import replace
from typing import Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from api.scaleout.cluster_store import APP_NAME, RESPONSES_ACTOR, ResponsesActor
from api.scaleout.ingress import Ingress
from api.scaleout.replica import EngineReplica
from api.scaleout.router import AffinityRouter
from api.server.assemble import configure_logging
from api.settings import ServerSettings
from runtime.manifest import TASK_TEXT_GENERATION, find_engine_dirs, read_manifest

log = logging.getLogger("appliance.ray")


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
            request_router_config=RequestRouterConfig(request_router_class=f"{AffinityRouter.__module__}.{AffinityRouter.__qualname__}"),  # type: ignore[arg-type]  # Ray's pydantic stub types every field as a dict
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
