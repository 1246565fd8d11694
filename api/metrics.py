"""Prometheus metrics of one server, through prometheus_client.

Under gunicorn with several workers each worker is its own process; the gunicorn config sets
PROMETHEUS_MULTIPROC_DIR before any worker starts, and `/metrics` then adds up every live
worker's values (prometheus_client's multiprocess mode). Without it (tests, one process) the
metrics live in a private registry, so several apps in one process never collide.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime.events import Event, Finish, KeepAlive

if TYPE_CHECKING:
    from runtime.job import SchedulerStats

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RATES = (1, 2, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000)
# Speculative decoding's gauges: the SchedulerStats field each one shows, its name and help.
_SPECULATION = (
    ("speculative_steps", "appliance_speculative_steps", "Speculative steps run (one per speculating sequence and step)"),
    ("speculative_tokens", "appliance_speculative_tokens", "Tokens speculative steps produced (kept drafts and the token sampled after them)"),
    ("draft_tokens", "appliance_draft_tokens", "Draft tokens speculative steps checked"),
    ("accepted_tokens", "appliance_draft_tokens_accepted", "Draft tokens the model agreed with (kept)"),
)


class Metrics:
    """Counters, gauges and histograms the routes update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("appliance_requests", "HTTP requests answered, by route and status", ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "appliance_request_duration_seconds", "Time to the response headers (streams: to the first byte)", ["route"], buckets=_SECONDS, registry=r
        )
        self.prompt_tokens = Counter("appliance_prompt_tokens", "Prompt tokens of generations and embeddings, cached ones included", ["model"], registry=r)
        self.cached_prompt_tokens = Counter(
            "appliance_prompt_cached_tokens", "Prompt tokens reused from the prefix cache instead of evaluated", ["model"], registry=r
        )
        self.prefix_lookups = Counter("appliance_prefix_cache_lookups", "Generations that looked for their prompt's prefix in the cache", ["model"], registry=r)
        self.prefix_hits = Counter("appliance_prefix_cache_hits", "Generations that found part of their prompt cached", ["model"], registry=r)
        self.completion_tokens = Counter("appliance_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.embedding_inputs = Counter("appliance_embedding_inputs", "Texts embedded", ["model"], registry=r)
        self.reranked_documents = Counter("appliance_reranked_documents", "Documents scored against a query by a reranker", ["model"], registry=r)
        self.time_to_first_token = Histogram(
            "appliance_time_to_first_token_seconds", "From a generation's submission to its first token", ["model"], buckets=_SECONDS, registry=r
        )
        self.decode_rate = Histogram(
            "appliance_decode_tokens_per_second", "Each generation's decode speed after its first token", ["model"], buckets=_RATES, registry=r
        )
        self.queue_depth = Gauge(
            "appliance_queue_depth", "Generations submitted and waiting for their first token", ["model"], multiprocess_mode="livesum", registry=r
        )
        self.active = Gauge("appliance_active_generations", "Generations producing tokens now", ["model"], multiprocess_mode="livesum", registry=r)
        # vLLM's names, so routers in front of many servers (llm-d, vllm-router, KServe's
        # autoscalers) balance across appliances as they do across vLLM replicas. Each worker
        # sets its own scheduler's figures (livesum: the server's total) at every generation's
        # submission, first token and end. KV use is the fraction of the KV pool's slots held by
        # running sequences: our pool reserves a whole context per slot (vLLM: blocks used).
        self.router_running = Gauge(
            "vllm:num_requests_running", "Sequences holding a KV slot (prefilling or decoding)", ["model_name"], multiprocess_mode="livesum", registry=r
        )
        self.router_waiting = Gauge(
            "vllm:num_requests_waiting", "Sequences queued for a KV slot", ["model_name"], multiprocess_mode="livesum", registry=r
        )
        self.kv_slots_used = Gauge("appliance_kv_slots_in_use", "KV pool slots held by running sequences", ["model"], multiprocess_mode="livesum", registry=r)
        self.kv_slots = Gauge("appliance_kv_slots", "KV pool slots (sequences generated at once)", ["model"], multiprocess_mode="livesum", registry=r)
        self.kv_usage = Gauge(
            "vllm:kv_cache_usage_perc", "Fraction of the KV pool held by running sequences (1 = full; several workers: the fullest one)", ["model_name"], multiprocess_mode="max", registry=r
        )
        # Speculative decoding (serve --speculate), this worker's totals since it started (livesum:
        # the server's): acceptance rate = accepted / draft tokens; tokens per step = tokens / steps.
        self.speculation = {field: Gauge(name, text, ["model"], multiprocess_mode="livesum", registry=r) for field, name, text in _SPECULATION}
        self.finished = Counter("appliance_generations", "Generations ended, by how they ended: stop, length, cancelled (the client went away) or error", ["model", "reason"], registry=r)

    def scheduler(self, model: str, stats: SchedulerStats) -> None:
        """Set the router gauges from this worker's scheduler of `model`."""
        self.router_running.labels(model).set(stats.active)
        self.router_waiting.labels(model).set(stats.waiting)
        self.kv_slots_used.labels(model).set(stats.active)
        self.kv_slots.labels(model).set(stats.slots)
        self.kv_usage.labels(model).set(stats.active / stats.slots if stats.slots else 0.0)
        if stats.speculation is not None:
            for field, gauge in self.speculation.items():
                gauge.labels(model).set(getattr(stats, field))

    def prefix_reused(self, model: str, cached_tokens: int) -> None:
        """Count a generation's lookup in the prefix cache: a hit when part of its prompt was cached."""
        self.prefix_lookups.labels(model).inc()
        if cached_tokens:
            self.prefix_hits.labels(model).inc()
            self.cached_prompt_tokens.labels(model).inc(cached_tokens)

    def embedded(self, model: str, inputs: int, tokens: int) -> None:
        """Count an embedding request's inputs and their tokens."""
        self.embedding_inputs.labels(model).inc(inputs)
        self.prompt_tokens.labels(model).inc(tokens)

    def reranked(self, model: str, documents: int, tokens: int) -> None:
        """Count a rerank request's documents and the tokens of its (query, document) pairs."""
        self.reranked_documents.labels(model).inc(documents)
        self.prompt_tokens.labels(model).inc(tokens)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class GenerationMetrics:
    """One generation's metrics, kept by callbacks as its events pass: no iterator of its own.

    Made when its events start to be read: it is then queued (`queue_depth`) until its first
    token, active after it; `saw` takes an event (a reader may skip the tokens after the
    first: they change no count), `failed` an error, and `close` (always called once) counts
    how it ended: the Finish's reason, "error", or "cancelled" when the reader stopped before
    a Finish (the client went away).
    """

    __slots__ = ("metrics", "name", "stats", "submitted", "first_token_at", "ended")

    def __init__(self, metrics: Metrics, name: str, stats: Callable[[], SchedulerStats]) -> None:
        self.metrics, self.name, self.stats = metrics, name, stats
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self.ended = "cancelled"  # unless a Finish or an error comes
        metrics.queue_depth.labels(name).inc()
        metrics.scheduler(name, stats())

    def saw(self, event: Event) -> None:
        if isinstance(event, KeepAlive):
            return
        metrics, name = self.metrics, self.name
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            metrics.queue_depth.labels(name).dec()
            metrics.active.labels(name).inc()
            metrics.scheduler(name, self.stats())
            metrics.time_to_first_token.labels(name).observe(self.first_token_at - self.submitted)
        if isinstance(event, Finish):
            self.ended = event.reason
            usage = event.usage
            metrics.prompt_tokens.labels(name).inc(usage.prompt_tokens)
            metrics.completion_tokens.labels(name).inc(usage.completion_tokens)
            metrics.prefix_reused(name, usage.cached_tokens)
            metrics.finished.labels(name, event.reason).inc()
            if usage.completion_tokens > 1 and usage.eval_duration_ns > 0:
                metrics.decode_rate.labels(name).observe((usage.completion_tokens - 1) / (usage.eval_duration_ns / 1e9))

    def failed(self) -> None:
        self.ended = "error"

    def close(self) -> None:
        metrics, name = self.metrics, self.name
        if self.ended in ("cancelled", "error"):
            metrics.finished.labels(name, self.ended).inc()
        if self.first_token_at is None:
            metrics.queue_depth.labels(name).dec()
        else:
            metrics.active.labels(name).dec()
        metrics.scheduler(name, self.stats())  # this one's slot may free at the scheduler's next tick: the next event sets it again
