"""Runtime configuration, as frozen dataclasses the CLI and the server fill: how engines are loaded
and run (`RuntimeSettings`), and how a generator schedules requests (`GeneratorSettings`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

# Speculation methods (runtime/speculation.py), and the most draft tokens one step may check:
# each is a position the step computes, and a run of many positions is compute, not bandwidth.
SPECULATION_METHODS = ("ngram", "draft")
MAX_DRAFT_TOKENS = 16


@dataclass(frozen=True)
class RuntimeSettings:
    """How engines are loaded and run."""

    # ONNX Runtime intra-op threads; 0 lets ONNX Runtime use one per physical core.
    intra_op_threads: int = 0
    # Whether idle intra-op threads spin waiting for work: lower latency per step, but a
    # busy core while idle. ONNX Runtime's default is to spin.
    allow_spinning: bool = True
    # Execution providers to use, in order; empty means "the engine's intended providers
    # that this machine has, then CPU".
    providers: tuple[str, ...] = ()
    # GPU engines: the CUDA device to run on, and whether decode steps are captured as CUDA
    # graphs and replayed (less launch overhead per step; fixed shapes per captured batch).
    device_id: int = 0
    cuda_graph: bool = False
    # Check every file's sha256 against the manifest at load (seconds for big engines).
    verify_files: bool = True
    # ONNX Runtime's CPU memory arena: buffers reused between runs without going back to malloc.
    # The export's parity run turns it off: one pass over a few sequences, where a lower peak
    # (the arena keeps its largest extents) matters more than allocation speed.
    cpu_arena: bool = True


# Prompt positions kept in free slots for reuse, by default (serve --prefix-cache-tokens): two full
# contexts of SmolLM2 (188 MB of its fp32 KV), a few conversations' worth, beside whatever the
# active sequences hold.
DEFAULT_PREFIX_CACHE_TOKENS = 4096


@dataclass(frozen=True)
class GeneratorSettings:
    """How a TextGenerator schedules requests on its engine: the one copy of these settings.

    `appliance serve` fills it from its flags (api/settings.py `ServerSettings.generator_settings`);
    `TextGenerator`, the API's engine loader and `load_models` take it whole, or its fields as
    keywords.
    """

    # Prompt tokens run per step while a prompt is read (serve --prefill-chunk).
    prefill_chunk: int = 512
    # Sequences decoded together in one batch (serve --slots).
    slots: int = 1
    # Requests that may wait for a slot before new ones are refused (serve --queue-limit).
    queue_limit: int = 64
    # Most tokens one request may ask for; requests that name no limit stop there too (serve --max-tokens).
    max_tokens_limit: int | None = None
    # Wall-clock limit per request, queueing included; None: none (serve --request-timeout).
    request_timeout_s: float | None = None
    # Tokens of earlier prompts kept for reuse (serve --prefix-cache-tokens); 0 turns reuse off.
    prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS
    # Reuse decoded tokens too, not only prompts, as llama.cpp does (serve --prefix-cache-decoded).
    reuse_decoded: bool = False
    # Greedy output independent of what else is batched (serve --fast-single-stream turns it off).
    batch_invariant: bool = True
    # Speculative decoding: None (off), "ngram" (prompt lookup) or "draft" (a draft engine's
    # greedy tokens; `draft_engine`, its directory) (serve --speculate, --draft-engine); the most
    # draft tokens one step checks (serve --draft-tokens); and the most sequences decoding at
    # once for which steps speculate (serve --speculate-max-streams; more: one batched step).
    speculate: str | None = None
    draft_engine: str | None = None
    draft_tokens: int = 4
    speculate_max_streams: int = 1
    # Most slots background requests (batch lines) hold at once, whatever is free: the rest
    # stay for interactive requests (serve --batch-slots).
    background_slots: int = 4
    # Most prompt tokens of background requests evaluated per scheduler tick, and only in a tick
    # with no interactive prompt to evaluate: small, so an interactive prompt that arrives waits
    # behind little of it.
    background_prefill_chunk: int = 32

    def __post_init__(self) -> None:
        if self.max_tokens_limit is not None and self.max_tokens_limit < 1:
            raise ValueError("max_tokens_limit must be at least 1")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")
        if self.speculate is not None and self.speculate not in SPECULATION_METHODS:
            raise ValueError(f"speculate must be one of {', '.join(SPECULATION_METHODS)} or None (got {self.speculate!r})")
        if (self.speculate == "draft") != (self.draft_engine is not None):
            raise ValueError("speculate='draft' needs a draft engine (serve --draft-engine DIR), and a draft engine needs speculate='draft'")
        if not 1 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"draft_tokens must be between 1 and {MAX_DRAFT_TOKENS} (got {self.draft_tokens})")
        if self.speculate_max_streams < 1:
            raise ValueError("speculate_max_streams must be at least 1")
        if self.background_slots < 1 or self.background_prefill_chunk < 1:
            raise ValueError("background_slots and background_prefill_chunk must be at least 1")

    def but(self, **changes: Any) -> GeneratorSettings:
        """These settings with `changes` (GeneratorSettings' field names) applied."""
        return replace(self, **changes) if changes else self


def takes_generator_settings(function: _F) -> _F:
    """Spell out `**generator` in `function`'s signature as GeneratorSettings' fields and defaults,
    so help() and inspect show the keywords it takes without another copy of them in the code."""
    signature = inspect.signature(function)
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    spelled = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type) for f in fields(GeneratorSettings)]
    function.__signature__ = signature.replace(parameters=[*kept, *spelled])  # type: ignore[attr-defined]
    return function
