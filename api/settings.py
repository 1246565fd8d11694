"""Server configuration: one frozen dataclass; only the CLI and the WSGI entry point read the environment.

The dataclass is also the one table of `appliance serve`'s options: each field's metadata names
its flag, help text, help group and parser (`option(...)`), or says it has no flag
(`env_only(...)`). The CLI builds its serve options from it; every field can also be set as
APPLIANCE_<FIELD> in the environment, read with the same parser.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.settings import MAX_DRAFT_TOKENS, SPECULATION_METHODS, GeneratorSettings, RuntimeSettings

# The runtime's own defaults, where the server keeps them.
_GENERATOR = GeneratorSettings()

# Environment variables the WSGI entry point reads (the CLI sets them for gunicorn's workers).
ENV_PREFIX = "APPLIANCE_"


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None


def positive(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise ValueError(f"must be at least 1 (got {value})")
    return value


def seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if not value > 0:
        raise ValueError(f"must be more than 0 seconds (got {text})")
    return value


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def keep_alive(text: str) -> float:
    """Ollama's keep_alive as seconds: a Go duration ("5m", "30s", "1h30m", "250ms", "-1m") or a number of seconds.

    A negative value is kept as -1: for as long as the server runs.
    """
    word = text.strip()
    try:
        value = float(word)
    except ValueError:
        sign, body = (-1.0, word[1:]) if word.startswith("-") else (1.0, word.removeprefix("+"))
        parts = list(_DURATION.finditer(body))
        if not body or not parts or "".join(m.group(0) for m in parts) != body:
            raise ValueError(f"not a duration: {text!r} (a number of seconds, or e.g. 30s, 5m, 1h30m; negative: forever)") from None
        value = sign * sum(float(m.group(1)) * _DURATION_UNITS[m.group(2)] for m in parts)
    if value != value:  # NaN
        raise ValueError(f"not a duration: {text!r}")
    return -1.0 if value < 0 else value


def cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of CPUs: {text!r}") from None
    if value < 0:
        raise ValueError(f"a number of CPUs cannot be negative: {text!r}")
    return value


def proxy_location(text: str) -> str:
    if text not in ("HeadOnly", "EveryNode"):
        raise ValueError(f"not a proxy location: {text!r}; use HeadOnly or EveryNode")
    return text


def ray_ingress(text: str) -> str:
    if text not in ("direct", "relay"):
        raise ValueError(f"not a Ray ingress: {text!r}; use direct or relay")
    return text


def speculation(text: str) -> str:
    word = text.strip().lower()
    if word not in ("off", *SPECULATION_METHODS):
        raise ValueError(f"not a speculation method: {text!r}; use off or {' or '.join(SPECULATION_METHODS)}")
    return word


def draft_count(text: str) -> int:
    value = positive(text)
    if value > MAX_DRAFT_TOKENS:
        raise ValueError(f"at most {MAX_DRAFT_TOKENS} (got {value})")
    return value


def switch(text: str) -> bool:
    """An environment variable's yes or no."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes or no: {text!r} (1/true/yes/on or 0/false/no/off)")


@dataclass(frozen=True)
class Option:
    """How one ServerSettings field is set: its `serve` flag (None: environment only) and parser."""

    flag: str | None
    help: str
    # One value from text (for list fields: one item); raises ValueError with the reason.
    parse: Callable[[str], Any] = str
    # The help group of `appliance serve --help`: None (the main one), "access" or "limits".
    group: str | None = None
    metavar: str | None = None
    # List fields only: values given as flags are added to the environment's, not put in their place.
    adds_to_env: bool = False


def option(flag: str, help: str, *, parse: Callable[[str], Any] = str, group: str | None = None, metavar: str | None = None, adds_to_env: bool = False) -> dict[str, Option]:
    """A field's metadata: settable as `flag` on `appliance serve` and as APPLIANCE_<FIELD>."""
    return {"option": Option(flag, help, parse, group, metavar, adds_to_env)}


def env_only(help: str, *, parse: Callable[[str], Any] = str) -> dict[str, Option]:
    """A field's metadata: no `serve` flag; APPLIANCE_<FIELD> only."""
    return {"option": Option(None, help, parse)}


def split_list(raw: str) -> tuple[str, ...]:
    """A comma- (or newline-) separated list, blanks dropped."""
    return tuple(item.strip() for item in raw.replace("\n", ",").split(",") if item.strip())


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP server runs. Each field can be set as APPLIANCE_<FIELD> in the environment."""

    # Where engine directories are found (each subdirectory with a manifest.json), or one engine.
    engines: Path = field(default=Path("engines"), metadata=option("--engines", "a directory of engine directories, or one engine", parse=Path))
    # Loopback by default: exposing the server beyond this machine is a decision (api/auth.py).
    host: str = field(default="127.0.0.1", metadata=option("--host", "address to listen on; 0.0.0.0 for every interface"))
    port: int = field(default=8000, metadata=option("--port", "port", parse=whole_number))
    # gunicorn worker processes; each loads its own copy of every engine (memory × workers).
    workers: int = field(default=1, metadata=option("--workers", "worker processes, each with its own copy of the engines", parse=positive))
    # Request threads per worker (gthread). A streaming request holds a thread to its end, so
    # this bounds concurrent requests per worker; keep it above `slots` + `queue_limit`, so
    # that every request the engine would queue gets a thread (and a 429 beyond the queue
    # rather than silence), and health checks and embeddings still find one.
    threads: int = field(default=96, metadata=option("--threads", "request threads per worker", parse=positive))
    # On SIGTERM, in-flight requests get this long to finish; new ones are answered 503.
    drain_timeout_s: float = field(default=30.0, metadata=option("--drain-timeout", "seconds in-flight requests get to finish on SIGTERM", parse=seconds))
    # ONNX Runtime intra-op threads per engine; 0: one per physical core.
    intra_op_threads: int = field(default=0, metadata=option("--intra-op-threads", "ONNX Runtime threads per engine; 0: one per core", parse=whole_number))
    # Sequences each decoder engine generates at once (one batched decode step for all). Each
    # slot reserves KV cache for the full context (SmolLM2 fp32: 94 MB), and it is all resident
    # once a batched step has run over the slot (the warm-up runs every batch size).
    slots: int = field(default=16, metadata=option("--slots", "sequences each text engine generates at once, batched", parse=positive))
    # Requests that may wait for a free slot per engine; beyond it they are refused (429).
    queue_limit: int = field(default=_GENERATOR.queue_limit, metadata=option("--queue-limit", "requests that may wait for a slot per engine before 429s", parse=whole_number))
    # Prompt tokens evaluated per scheduler tick, between batched decode steps: smaller keeps
    # running streams smoother while a long prompt arrives, larger gives a faster first token.
    prefill_chunk: int = field(default=_GENERATOR.prefill_chunk, metadata=option("--prefill-chunk", "prompt tokens evaluated per scheduler tick", parse=positive))
    # Prefix reuse: a finished sequence's prompt KV stays in its free slot, and a prompt that
    # starts with the same tokens (a chat's next turn, a shared system prompt) evaluates only
    # the rest. This many positions at most are kept in free slots (per engine); 0 turns it off.
    prefix_cache_tokens: int = field(default=_GENERATOR.prefix_cache_tokens, metadata=option(
        "--prefix-cache-tokens", "prompt positions kept in free slots for prefix reuse, per engine; 0: off", parse=whole_number,
    ))
    # By default a request's greedy output is the same alone as in any batch, bit for bit: a
    # lone sequence's decode steps run as two rows, because ONNX Runtime's one-row int4 kernel
    # rounds differently and the int8 activations turn that into other tokens. That costs a lone
    # stream about 20% of its speed on our 2-core machine (batched streams nothing); this
    # switch gives the speed back and lets output depend on the company.
    fast_single_stream: bool = field(default=False, metadata=option(
        "--fast-single-stream", "run a lone request's steps as one row: ~20% faster alone, but its greedy output may differ from the same request in a batch", parse=switch,
    ))
    # By default only positions written by prompt evaluations are reused, so reuse never changes
    # an output. With this, generated tokens' positions are reused too (as llama.cpp does): a
    # chat's next turn evaluates only its new message, but greedy output can differ on near ties.
    prefix_cache_decoded: bool = field(default=False, metadata=option(
        "--prefix-cache-decoded", "reuse generated tokens' cached positions too: faster chats, output may differ from a fresh evaluation", parse=switch,
    ))
    # Speculative decoding (runtime/speculation.py): each sequence guesses its next tokens — from
    # its own text (ngram, prompt lookup) or with a smaller draft engine (draft) — and checks them
    # in one run; copying work (extraction, quoting, code edits) gets several tokens per step. Off by default: a speculating sequence's tokens come
    # from the prompt kernels, so its greedy output can differ on near ties from the same request
    # without speculation; and each speculating sequence is a run of its own, so it speculates only
    # while at most --speculate-max-streams requests decode (beyond that, one batched step for all).
    speculate: str = field(default="off", metadata=option(
        "--speculate", "speculative decoding: ngram (prompt lookup: drafts copied from the request's own text), draft (a draft engine's tokens, "
        "--draft-engine) or off; "
        "greedy output may differ on near ties from decoding without it (docs/performance.md)", parse=speculation, metavar="METHOD",
    ))
    # The draft engine of --speculate draft: a smaller model exported with the same tokenizer (for
    # example SmolLM2-135M for a larger SmolLM2), its directory; it is loaded once per worker.
    draft_engine: str = field(default="", metadata=option(
        "--draft-engine", "the engine whose greedy tokens are the drafts of --speculate draft (same vocabulary as the served models)", metavar="DIR",
    ))
    draft_tokens: int = field(default=_GENERATOR.draft_tokens, metadata=option(
        "--draft-tokens", f"most draft tokens one speculative step checks (1 to {MAX_DRAFT_TOKENS})", parse=draft_count,
    ))
    speculate_max_streams: int = field(default=_GENERATOR.speculate_max_streams, metadata=option(
        "--speculate-max-streams", "speculate only while at most this many requests decode at once; more share one batched step", parse=positive,
    ))
    # How long a model stays loaded after its last request, unless the request says (Ollama's
    # keep_alive); then it is unloaded (memory freed) and the next request loads it again. -1:
    # for the server's lifetime, the default. Each worker unloads its own copy.
    keep_alive_s: float = field(default=-1.0, metadata=option(
        "--keep-alive", "how long a model stays loaded after its last request, e.g. 30s, 5m, 1h, or seconds; -1: for the server's lifetime; "
        "requests may set their own (Ollama's keep_alive)", parse=keep_alive, metavar="DURATION",
    ))

    # API keys: `Authorization: Bearer <key>` is required on every route but /health when any
    # is set. Keys given directly (APPLIANCE_API_KEYS, comma-separated) and files with one key
    # per line (APPLIANCE_API_KEY_FILES, comma-separated paths). Flags add to the environment's.
    api_key_files: tuple[str, ...] = field(default=(), metadata=option(
        "--api-key-file", "file of API keys, one per line; requests then need 'Authorization: Bearer <key>'", group="access", metavar="FILE", adds_to_env=True,
    ))
    api_keys: tuple[str, ...] = field(default=(), metadata=option(
        "--api-key", "an API key; it shows in the process list, so prefer a file or the variable", group="access", metavar="KEY", adds_to_env=True,
    ))
    # Listen beyond loopback without API keys: only when asked for in so many words.
    insecure_no_auth: bool = field(default=False, metadata=option("--insecure-no-auth", "allow listening beyond loopback without any API key", parse=switch, group="access"))
    # Origins (scheme://host[:port]) browsers may call the server from; "*" for any. None by default.
    cors_origins: tuple[str, ...] = field(default=(), metadata=option(
        "--cors-origin", "browser origin allowed to call the server, e.g. https://app.example, or *", group="access", metavar="ORIGIN",
    ))
    # Ollama's /api/pull may build a default model's engine into the engines folder, and
    # /api/delete and /api/copy change it; with this, requests never change the folder (a pull
    # of a model already served still succeeds).
    read_only_engines: bool = field(default=False, metadata=option(
        "--read-only-engines", "refuse /api/pull builds, /api/delete and /api/copy: requests never change the engines folder", parse=switch, group="access",
    ))

    # Most tokens one request may generate (max_tokens / num_predict); requests that set no
    # limit stop there too.
    max_tokens: int = field(default=4096, metadata=option("--max-tokens", "most tokens one request may generate", parse=positive, group="limits"))
    # Most messages in one chat request.
    max_messages: int = field(default=1024, metadata=option("--max-messages", "most messages in one chat request", parse=positive, group="limits"))
    # Most choices per request (`n`) and most prompts or inputs per request.
    max_n: int = field(default=16, metadata=option("--max-n", "most choices (n) in one request", parse=positive, group="limits"))
    max_inputs: int = field(default=2048, metadata=option("--max-inputs", "most prompts or embedding inputs in one request", parse=positive, group="limits"))
    # Most documents one rerank request may score (Cohere allows 1000, Jina 2048).
    max_rerank_documents: int = field(default=1000, metadata=option("--max-rerank-documents", "most documents in one rerank request", parse=positive, group="limits"))
    # Largest accepted request body; larger ones get 413.
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata=option("--max-body-bytes", "largest request body; larger ones get 413", parse=positive, group="limits"))
    # While a streamed request produces nothing (queued, or a long prompt being evaluated), an
    # SSE comment goes out this often, so a client that went away is noticed and its request ends.
    stream_keepalive_s: float = field(default=5.0, metadata=option(
        "--stream-keepalive", "seconds between SSE keep-alive comments while a stream waits", parse=positive_seconds, group="limits",
    ))
    # Wall-clock limit of one generation request, waiting for a slot included: a request still
    # waiting then gets 503 with Retry-After, a running one ends with a timeout error (504).
    request_timeout_s: float = field(default=600.0, metadata=option(
        "--request-timeout", "seconds one generation request may take, queueing included", parse=positive_seconds, group="limits",
    ))

    # Stored responses of the Responses API (GET /v1/responses/{id}, previous_response_id):
    # one SQLite file every worker opens. Unset, the server keeps them in a private temporary
    # file for its lifetime; a file given here keeps them across restarts too.
    response_store: str = field(default="", metadata=option(
        "--response-store", "SQLite file of stored responses (Responses API); default: a temporary file for the server's lifetime",
        group="limits", metavar="FILE",
    ))
    # Most stored responses (the oldest go first; 0 turns storing off) and how long one is kept.
    response_store_max: int = field(default=1000, metadata=option(
        "--response-store-max", "most stored responses, oldest dropped first; 0: store none", parse=whole_number, group="limits",
    ))
    response_store_ttl_s: float = field(default=86400.0, metadata=option(
        "--response-store-ttl", "seconds a stored response is kept", parse=positive_seconds, group="limits",
    ))

    # The Files and Batch APIs (/v1/files, /v1/batches; api/batches/): uploaded files and batch
    # outputs are files in this folder, their records one SQLite file in it that every worker
    # opens. Unset, the server uses a private temporary folder for its lifetime (batches then end
    # with it); a folder given here keeps files and batches across restarts, and a batch that was
    # running resumes from its first line not yet written.
    files_dir: str = field(default="", metadata=option(
        "--files-dir", "folder of uploaded files and batch results (Files and Batch APIs); default: a temporary folder for the server's lifetime",
        group="batches", metavar="DIR",
    ))
    # An upload is bounded by this, not by --max-body-bytes (a batch's input is far larger than a
    # chat request); the folder by the two totals, enforced at each upload (batch outputs count
    # too, but are never refused: a batch that ran keeps its results).
    files_max_bytes: int = field(default=128 * 1024 * 1024, metadata=option(
        "--files-max-bytes", "largest uploaded file (POST /v1/files); larger ones get 413", parse=positive, group="batches",
    ))
    files_total_bytes: int = field(default=1024 * 1024 * 1024, metadata=option(
        "--files-total-bytes", "most bytes all stored files may hold; uploads beyond it get 413", parse=positive, group="batches",
    ))
    files_max_count: int = field(default=1000, metadata=option(
        "--files-max-count", "most stored files; uploads beyond it get 413 until some are deleted", parse=positive, group="batches",
    ))
    # Batch lines run at a lower priority than interactive requests (runtime/scheduler.py): at
    # most this many hold a slot of an engine at once (each worker runs one batch at a time, this
    # many lines of it at once), never the last free slot.
    batch_slots: int = field(default=_GENERATOR.background_slots, metadata=option(
        "--batch-slots", "most slots of each engine that batch lines hold at once (the rest stay for interactive requests)", parse=positive, group="batches",
    ))
    # Most prompt tokens of batch lines evaluated per scheduler tick, and only in ticks with no
    # interactive prompt to evaluate: an interactive request that arrives waits behind at most this.
    batch_prefill_chunk: int = field(default=_GENERATOR.background_prefill_chunk, metadata=option(
        "--batch-prefill-chunk", "most prompt tokens of batch lines evaluated per scheduler tick", parse=positive, group="batches",
    ))

    # Embedding inputs given as token ids are read in the embedding model's own vocabulary only
    # when the operator says that is what clients send; otherwise they are refused (400), since
    # LangChain's OpenAIEmbeddings sends tiktoken ids by default, which would give wrong vectors.
    embedding_token_ids: bool = field(default=False, metadata=option(
        "--embedding-token-ids", "read /v1/embeddings token-id inputs in the model's own vocabulary (default: refuse them, as other tokenizers' ids give wrong vectors)",
        parse=switch,
    ))

    # Execution providers, in order, for every engine (e.g. CUDAExecutionProvider); empty: each
    # engine's own (its manifest), GPU ones where a GPU is present. Naming CPUExecutionProvider
    # alone runs a GPU engine on the CPU, slowly; naming a provider that cannot run is an error.
    providers: tuple[str, ...] = field(default=(), metadata=option(
        "--providers", "ONNX Runtime execution provider for every engine, in order of preference (repeatable); default: each engine's own",
        group="gpu", metavar="PROVIDER",
    ))
    # The CUDA device GPU engines run on (CUDA_VISIBLE_DEVICES picks among several too).
    device_id: int = field(default=0, metadata=option("--device-id", "CUDA device GPU engines run on", parse=whole_number, group="gpu"))
    # Capture each batched decode step as a CUDA graph and replay it (ONNX Runtime's
    # enable_cuda_graph): less kernel-launch overhead per token. Not verified on a GPU yet.
    cuda_graph: bool = field(default=False, metadata=option(
        "--cuda-graph", "replay decode steps as CUDA graphs (CUDA engines; not yet verified on a GPU)", parse=switch, group="gpu",
    ))

    # Scale-out on Ray Serve (`pip install -e .[ray]`): replicas autoscaled on their ongoing
    # requests, a conversation routed to the replica that holds its prefix
    # (api/scaleout/router.py, docs/scale-out.md).
    ray: bool = field(default=False, metadata=option(
        "--ray", "serve through Ray Serve instead of gunicorn: replicas across the cluster's nodes", parse=switch, group="ray",
    ))
    ray_address: str = field(default="", metadata=option(
        "--ray-address", "Ray cluster to join ('auto': the one this node belongs to); default: start a Ray on this machine", group="ray",
    ))
    ray_proxy_location: str = field(default="HeadOnly", metadata=option(
        "--ray-proxy-location", "where Ray Serve listens: HeadOnly (this node) or EveryNode (each node, for a load balancer in front)", parse=proxy_location, group="ray",
    ))
    # How tokens reach the client: `direct`, replicas answer HTTP themselves behind Ray Serve's
    # HAProxy ingress (no Ray hop per token; every replica serves every engine); `relay`, each
    # engine its own deployment behind an ingress deployment (a Ray hop per chunk; a stream cut by
    # a dead replica still ends with an error event). docs/scale-out.md says which to choose.
    ray_ingress: str = field(default="direct", metadata=option(
        "--ray-ingress", "direct: replicas stream to clients through HAProxy; relay: through an ingress deployment (a Ray hop per chunk)",
        parse=ray_ingress, group="ray",
    ))
    ray_min_replicas: int = field(default=1, metadata=option("--ray-min-replicas", "fewest replicas (per engine with --ray-ingress relay)", parse=positive, group="ray"))
    ray_max_replicas: int = field(default=1, metadata=option("--ray-max-replicas", "most replicas (autoscaled between the two)", parse=positive, group="ray"))
    ray_target_ongoing: int = field(default=0, metadata=option(
        "--ray-target-ongoing", "ongoing requests per replica the autoscaler aims at; 0: --slots", parse=whole_number, group="ray",
    ))
    ray_replica_cpus: float = field(default=1.0, metadata=option(
        "--ray-replica-cpus", "CPUs Ray reserves for each replica (where replicas are placed)", parse=cpus, group="ray",
    ))
    ray_upscale_delay_s: float = field(default=5.0, metadata=option(
        "--ray-upscale-delay", "seconds load must stay above target before a replica is added", parse=seconds, group="ray",
    ))
    ray_downscale_delay_s: float = field(default=60.0, metadata=option(
        "--ray-downscale-delay", "seconds load must stay below target before a replica is removed", parse=seconds, group="ray",
    ))

    # Run one short generation / embedding per engine before reporting healthy.
    warm: bool = field(default=True, metadata=env_only("run one short generation or embedding per engine before reporting healthy", parse=switch))
    # Seconds an idle kept-alive HTTP connection stays open.
    keepalive_s: float = field(default=5.0, metadata=env_only("seconds an idle kept-alive HTTP connection stays open", parse=seconds))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServerSettings:
        """Settings from APPLIANCE_* variables; unset ones keep their defaults.

        A value its field's parser refuses raises ValueError naming the variable and why.
        """
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = env_name(spec.name)
            raw = environ.get(name)
            if raw is None:
                continue
            parse = option_of(spec.name).parse
            try:
                values[spec.name] = tuple(parse(item) for item in split_list(raw)) if isinstance(spec.default, tuple) else parse(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r}: {exc}") from None
        return cls(**values)

    def runtime_settings(self) -> RuntimeSettings:
        """How this server's engines are loaded and run."""
        return RuntimeSettings(intra_op_threads=self.intra_op_threads, providers=self.providers, device_id=self.device_id, cuda_graph=self.cuda_graph)

    def generator_settings(self) -> GeneratorSettings:
        """How each text engine of this server schedules its requests."""
        return GeneratorSettings(
            prefill_chunk=self.prefill_chunk, slots=self.slots, queue_limit=self.queue_limit, max_tokens_limit=self.max_tokens,
            request_timeout_s=self.request_timeout_s, prefix_cache_tokens=self.prefix_cache_tokens,
            reuse_decoded=self.prefix_cache_decoded, batch_invariant=not self.fast_single_stream,
            speculate=None if self.speculate == "off" else self.speculate, draft_tokens=self.draft_tokens,
            draft_engine=self.draft_engine or None,
            speculate_max_streams=self.speculate_max_streams,
            background_slots=self.batch_slots, background_prefill_chunk=self.batch_prefill_chunk,
        )

    def to_env(self) -> dict[str, str]:
        """The APPLIANCE_* variables that reproduce these settings in a worker."""
        env = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            env[env_name(spec.name)] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env


def env_name(field_name: str) -> str:
    """The environment variable of one ServerSettings field."""
    return ENV_PREFIX + field_name.upper()


def option_of(field_name: str) -> Option:
    """One ServerSettings field's row of the table."""
    return _OPTIONS[field_name]


def _table() -> dict[str, Option]:
    rows = {spec.name: spec.metadata.get("option") for spec in fields(ServerSettings)}
    missing = [name for name, row in rows.items() if not isinstance(row, Option)]
    if missing:  # a field added without its row fails here, at import
        raise TypeError(f"ServerSettings fields without option(...) or env_only(...) metadata: {missing}")
    return {name: row for name, row in rows.items() if isinstance(row, Option)}


_OPTIONS = _table()
