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
from api.metrics import Metrics
from api.registry import ModelRegistry
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
    # Set when the worker received SIGTERM: new requests get 503, in-flight ones finish.
    draining: bool = False
