"""Server configuration: one frozen dataclass; only the CLI and the WSGI entry point read the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

# Environment variables the WSGI entry point reads (the CLI sets them for gunicorn's workers).
ENV_PREFIX = "APPLIANCE_"


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP server runs. Each field can be set as APPLIANCE_<FIELD> in the environment."""

    # Where engine directories are found (each subdirectory with a manifest.json), or one engine.
    engines: Path = Path("engines")
    # Loopback by default: exposing the server beyond this machine is a decision (api/auth.py).
    host: str = "127.0.0.1"
    port: int = 8000
    # gunicorn worker processes; each loads its own copy of every engine (memory × workers).
    workers: int = 1
    # Request threads per worker (gthread). A streaming request holds a thread to its end, so
    # this bounds concurrent requests per worker; keep it above `slots` + `queue_limit`, so
    # that every request the engine would queue gets a thread (and a 429 beyond the queue
    # rather than silence), and health checks and embeddings still find one.
    threads: int = 96
    # On SIGTERM, in-flight requests get this long to finish; new ones are answered 503.
    drain_timeout_s: float = 30.0
    # Largest accepted request body; larger ones get 413.
    max_body_bytes: int = 16 * 1024 * 1024
    # Most choices per request (`n`) and most prompts or inputs per request.
    max_n: int = 16
    max_inputs: int = 2048
    # Most messages in one chat request.
    max_messages: int = 1024
    # Most tokens one request may generate (max_tokens / num_predict); requests that set no
    # limit stop there too.
    max_tokens: int = 4096
    # Wall-clock limit of one generation request, waiting for a slot included: a request still
    # waiting then gets 503 with Retry-After, a running one ends with a timeout error (504).
    request_timeout_s: float = 600.0
    # While a streamed request produces nothing (queued, or a long prompt being evaluated), an
    # SSE comment goes out this often, so a client that went away is noticed and its request ends.
    stream_keepalive_s: float = 5.0
    # API keys: `Authorization: Bearer <key>` is required on every route but /health when any
    # is set. Keys given directly (APPLIANCE_API_KEYS, comma-separated) and files with one key
    # per line (APPLIANCE_API_KEY_FILES, comma-separated paths).
    api_keys: tuple[str, ...] = ()
    api_key_files: tuple[str, ...] = ()
    # Listen beyond loopback without API keys: only when asked for in so many words.
    insecure_no_auth: bool = False
    # Origins (scheme://host[:port]) browsers may call the server from; "*" for any. None by default.
    cors_origins: tuple[str, ...] = ()
    # ONNX Runtime intra-op threads per engine; 0: one per physical core.
    intra_op_threads: int = 0
    # Prompt tokens evaluated per scheduler tick, between batched decode steps: smaller keeps
    # running streams smoother while a long prompt arrives, larger gives a faster first token.
    prefill_chunk: int = 512
    # Sequences each decoder engine generates at once (one batched decode step for all). Each
    # slot reserves KV cache for the full context (SmolLM2 fp32: 94 MB), and it is all resident
    # once a batched step has run over the slot (the warm-up runs every batch size).
    slots: int = 16
    # Requests that may wait for a free slot per engine; beyond it they are refused (429).
    queue_limit: int = 64
    # Run one short generation / embedding per engine before reporting healthy.
    warm: bool = True
    # Seconds an idle kept-alive HTTP connection stays open.
    keepalive_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "ServerSettings":
        """Settings from APPLIANCE_* variables; unset ones keep their defaults."""
        values = {}
        for spec in fields(cls):
            raw = environ.get(ENV_PREFIX + spec.name.upper())
            if raw is None:
                continue
            kind = type(getattr(cls(), spec.name))
            try:
                if kind is tuple:
                    values[spec.name] = split_list(raw)
                elif kind is bool:
                    values[spec.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                else:
                    values[spec.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{spec.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The APPLIANCE_* variables that reproduce these settings in a worker."""
        env = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            env[ENV_PREFIX + spec.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env


def split_list(raw: str) -> tuple[str, ...]:
    """A comma- (or newline-) separated list, blanks dropped."""
    return tuple(item.strip() for item in raw.replace("\n", ",").split(",") if item.strip())
