"""One server's parts from its settings: the context, the Falcon app and the engine loader.

gunicorn's workers (api/server/wsgi.py) and Ray Serve's replicas (api/scaleout/replica.py) are assembled
here alike, so both serve the same routes, errors and keys from the same engines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import falcon

from api.app import create_app
from api.auth import load_api_keys
from api.batches.runner import BatchRunner
from api.batches.store import FILES_DIR_ENDS_WITH_SERVER, Store
from api.context import ServerContext
from api.models.loader import RuntimeLoader
from api.models.pulls import ChildProcessBuilder, Pulls
from api.models.registry import LoadedModel, ModelRegistry
from api.response_store import ResponseStore
from api.settings import ServerSettings


@dataclass
class Assembled:
    context: ServerContext
    application: falcon.App
    load: Callable[[], list[LoadedModel]]  # loads and warms every engine under settings.engines

    def load_in_background(self) -> None:
        self.context.registry.load_in_background(self.load)

    def run_batches(self) -> BatchRunner:
        """Start this worker's batch runner (api/batches/runner.py); it stops when the worker drains."""
        runner = BatchRunner(self.context)
        runner.start()
        return runner


def assemble(settings: ServerSettings, responses: ResponseStore | None = None, builds: bool = True) -> Assembled:
    """The server of `settings`; `responses` replaces the store its settings name (Ray's shared one).

    `builds`: /api/pull may export a default model that is not built yet (a Ray replica may not:
    its engine directory is its deployment's).
    """
    responses = responses or ResponseStore(settings.response_store or ":memory:", max_records=settings.response_store_max, ttl_s=settings.response_store_ttl_s)
    loader = RuntimeLoader(settings.runtime_settings(), settings.generator_settings(), warm=settings.warm)
    # /api/pull builds default models' engines in a child process (`python -m export.engines`): torch never enters a worker.
    pulls = Pulls(ChildProcessBuilder() if builds else None)
    ends_with_server = os.environ.get(FILES_DIR_ENDS_WITH_SERVER) == "1"
    files = Store(settings.files_dir or None, settings.files_max_bytes, settings.files_total_bytes, settings.files_max_count, ends_with_server=ends_with_server)
    context = ServerContext(ModelRegistry(loader, settings.engines), settings, auth=load_api_keys(settings), responses=responses, pulls=pulls, files=files)
    if ends_with_server:
        context.log.warning("files and batches are kept in a temporary folder that ends with the server: a restart loses them (--files-dir DIR keeps them)")

    def load() -> list[LoadedModel]:
        models = loader.load_all(settings.engines)
        for model in models:
            info = model.info
            context.log.info(
                "loaded %s (%s, %s, %s, context %d) in %.1f s",
                info.name, info.task, info.precision, ",".join(info.providers), info.context_length, model.load_duration_ns / 1e9,
            )
        return models

    return Assembled(context, create_app(context), load)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
