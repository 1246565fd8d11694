"""The WSGI entry point gunicorn loads in each worker: `api.wsgi:application`.

Importing this module is cheap: settings come from APPLIANCE_* environment variables (the
`appliance serve` command sets them), the app is created at once, and the engines load on a
background thread, after the worker has forked. Until they are loaded and warm, `/health`
and every model route answer 503 with the reason.
"""

from __future__ import annotations

import logging

from api.app import create_app
from api.auth import describe, load_api_keys
from api.context import ServerContext
from api.pulls import ChildProcessBuilder, Pulls
from api.registry import ModelRegistry, RuntimeLoader
from api.response_store import ResponseStore
from api.settings import ServerSettings
from runtime.settings import RuntimeSettings

logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")

settings = ServerSettings.from_env()
responses = ResponseStore(settings.response_store or ":memory:", max_records=settings.response_store_max, ttl_s=settings.response_store_ttl_s)
loader = RuntimeLoader(
    RuntimeSettings(intra_op_threads=settings.intra_op_threads, providers=settings.providers, device_id=settings.device_id, cuda_graph=settings.cuda_graph),
    prefill_chunk=settings.prefill_chunk, slots=settings.slots,
    queue_limit=settings.queue_limit, warm=settings.warm, max_tokens_limit=settings.max_tokens, request_timeout_s=settings.request_timeout_s,
    prefix_cache_tokens=settings.prefix_cache_tokens, prefix_cache_decoded=settings.prefix_cache_decoded, batch_invariant=not settings.fast_single_stream,
)
# /api/pull builds default models' engines in a child process (`python -m export.engines`): torch never enters a worker.
pulls = Pulls(ChildProcessBuilder())
context = ServerContext(ModelRegistry(loader, settings.engines), settings, auth=load_api_keys(settings), responses=responses, pulls=pulls)
application = create_app(context)
context.log.info("%s", describe(settings, context.auth))


def _load() -> list:
    models = loader.load_all(settings.engines)
    for model in models:
        info = model.info
        context.log.info(
            "loaded %s (%s, %s, %s, context %d) in %.1f s",
            info.name, info.task, info.precision, ",".join(info.providers), info.context_length, model.load_duration_ns / 1e9,
        )
    return models


context.registry.load_in_background(_load)
