"""Running a request's generations on a model, with metrics, for both dialects.

A request may ask for several generations (`n` choices, several prompts). They are all
validated before anything runs, so a bad one is a 400 rather than an error mid-stream;
then `stream_events` submits them all at once — a saturated engine refuses right there,
with a 429 before any byte is sent — and the engine's scheduler batches them together. It
yields `(choice, event)` as tokens come, the choices' events interleaved. Closing the
iterator (a client went away) cancels every generation, which frees their slots.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

from api.metrics import Metrics
from api.models.registry import Events, LoadedModel
from runtime.errors import ContextLengthError
from runtime.events import Delta, Event, Finish, KeepAlive, Usage
from runtime.request import GenerationRequest


@dataclass(frozen=True)
class Choice:
    """One generation of a request: its index in the answer and which prompt it continues."""

    index: int
    prompt_index: int
    request: GenerationRequest


def prepare(model: LoadedModel, choices: Sequence[Choice], prompt_param: str | None = None) -> None:
    """Validate every choice (ranges, context fit) before the first token is generated.

    A prompt that does not fit is blamed on `prompt_param` (OpenAI names "messages" or "prompt").
    """
    for choice in choices:
        try:
            model.text().prepare(choice.request)
        except ContextLengthError as exc:
            exc.param = exc.param or prompt_param
            raise


def tracked(model: LoadedModel, events: Events, metrics: Metrics) -> Generator[Event, None, None]:
    """One generation's events, counted in the metrics."""
    name = model.name
    submitted = time.perf_counter()
    first_token_at = None
    ended = "cancelled"  # unless a Finish or an error comes: the client went away
    metrics.queue_depth.labels(name).inc()
    scheduler = model.text().stats
    metrics.scheduler(name, scheduler())
    try:
        with closing(events):
            for event in events:
                if isinstance(event, KeepAlive):
                    yield event
                    continue
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    metrics.queue_depth.labels(name).dec()
                    metrics.active.labels(name).inc()
                    metrics.scheduler(name, scheduler())
                    metrics.time_to_first_token.labels(name).observe(first_token_at - submitted)
                if isinstance(event, Finish):
                    ended = event.reason
                    usage = event.usage
                    metrics.prompt_tokens.labels(name).inc(usage.prompt_tokens)
                    metrics.completion_tokens.labels(name).inc(usage.completion_tokens)
                    metrics.prefix_reused(name, usage.cached_tokens)
                    metrics.finished.labels(name, event.reason).inc()
                    if usage.completion_tokens > 1 and usage.eval_duration_ns > 0:
                        metrics.decode_rate.labels(name).observe((usage.completion_tokens - 1) / (usage.eval_duration_ns / 1e9))
                yield event
    except Exception:
        ended = "error"
        raise
    finally:
        if ended in ("cancelled", "error"):
            metrics.finished.labels(name, ended).inc()
        if first_token_at is None:
            metrics.queue_depth.labels(name).dec()
        else:
            metrics.active.labels(name).dec()
        metrics.scheduler(name, scheduler())  # this one's slot may free at the scheduler's next tick: the next event sets it again


def stream_events(
    model: LoadedModel, choices: Sequence[Choice], metrics: Metrics, heartbeat_s: float | None = None
) -> Iterator[tuple[Choice, Event]]:
    """Submit every choice now (QueueFullError comes from here), then their events, interleaved.

    With `heartbeat_s`, a KeepAlive comes whenever a choice produced nothing for that long.
    """
    submitted: list[tuple[Choice, Events]] = []
    try:
        for choice in choices:
            submitted.append((choice, model.text().generate(choice.request, heartbeat_s=heartbeat_s)))
    except BaseException:
        for _, events in submitted:
            events.close()
        raise
    return _interleave([(choice, tracked(model, events, metrics)) for choice, events in submitted], [e for _, e in submitted])


def _interleave(streams: list[tuple[Choice, Generator[Event, None, None]]], raw: list[Events]) -> Generator[tuple[Choice, Event], None, None]:
    """One event of each choice in turn: they advance together in the engine's batched steps.

    `raw` are the engine's own streams, closed at the end too: a tracked stream that never
    started would not close its engine stream itself.
    """
    running = list(streams)
    try:
        while running:
            for item in list(running):
                choice, events = item
                event = next(events, None)
                if event is None:
                    running.remove(item)
                else:
                    yield choice, event
    finally:
        for _, tracked_events in streams:
            tracked_events.close()
        for engine_events in raw:
            engine_events.close()


@dataclass
class Collected:
    """A choice's whole answer: text, tokens, log-probabilities, how it finished."""

    choice: Choice
    text: str
    deltas: list[Delta]
    finish: Finish


def collect(model: LoadedModel, choices: Sequence[Choice], metrics: Metrics) -> list[Collected]:
    """Run every choice to the end (non-streaming answers)."""
    deltas: dict[int, list[Delta]] = {c.index: [] for c in choices}
    results = []
    for choice, event in stream_events(model, choices, metrics):
        if isinstance(event, Delta):
            deltas[choice.index].append(event)
        elif isinstance(event, Finish):
            parts = deltas[choice.index]
            results.append(Collected(choice, "".join(d.text for d in parts), parts, event))
    return results


def total_usage(finishes: Sequence[tuple[Choice, Finish]]) -> Usage:
    """One usage for the request: each prompt counted once, every choice's completion added."""
    prompts: dict[int, int] = {}
    completion = 0
    durations = [0, 0, 0, 0]
    cached: dict[int, int] = {}
    truncated = 0
    for choice, finish in finishes:
        usage = finish.usage
        prompts[choice.prompt_index] = usage.prompt_tokens
        cached[choice.prompt_index] = max(cached.get(choice.prompt_index, 0), usage.cached_tokens)
        completion += usage.completion_tokens
        truncated = max(truncated, usage.prompt_tokens_truncated)
        for i, value in enumerate((usage.load_duration_ns, usage.prompt_eval_duration_ns, usage.eval_duration_ns, usage.total_duration_ns)):
            durations[i] += value
    load, prompt_eval, evaluation, total = durations
    return Usage(
        sum(prompts.values()), completion, load, prompt_eval, evaluation, total, prompt_tokens_truncated=truncated, cached_tokens=sum(cached.values())
    )
