"""What every route needs, injected once: models, settings, metrics, a clock and id source.

Tests replace the clock and the id source to get byte-exact transcripts.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from api.auth import ApiKeys
from api.batches.store import Store
from api.metrics import Metrics
from api.models.pulls import Pulls
from api.models.registry import ModelRegistry
from api.models.residency import FOREVER
from api.response_store import ResponseStore
from api.settings import ServerSettings


def random_id(prefix: str) -> str:
    """An id like OpenAI's: a prefix and 24 random hex digits."""
    return f"{prefix}{secrets.token_hex(12)}"


@dataclass
class ServerContext:
    registry: ModelRegistry
    settings: ServerSettings = field(default_factory=ServerSettings)
    metrics: Metrics = field(default_factory=Metrics)
    # Wall-clock seconds since the epoch (OpenAI's `created`, Ollama's `created_at`).
    clock: Callable[[], float] = time.time
    new_id: Callable[[str], str] = random_id
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("appliance.api"))
    # The API keys requests must carry (none: authentication off).
    auth: ApiKeys = field(default_factory=ApiKeys)
    # Stored responses of the Responses API (in memory unless the server names a shared file).
    responses: ResponseStore = field(default_factory=ResponseStore)
    # Files and batches of the Files and Batch APIs (api/batches/; a temporary folder unless the server names one).
    files: Store = field(default_factory=Store)
    # Ollama's /api/pull: the builds running in this worker, and what builds engines (none: only served models pull).
    pulls: Pulls = field(default_factory=Pulls)
    # Set when the worker received SIGTERM: new requests get 503, in-flight ones finish.
    draining: bool = False

    def __post_init__(self) -> None:
        # Requests that send no keep_alive keep their model loaded this long (the server's --keep-alive).
        self.registry.keep_alive_s = FOREVER if self.settings.keep_alive_s < 0 else self.settings.keep_alive_s
