"""Running a request's generations on a model, with metrics, for both dialects.

A request may ask for several generations (`n` choices, several prompts). `stream_events`
validates them all and fits their prompts before anything runs, so a bad one is a 400 rather
than an error mid-stream, then submits them all at once — a saturated engine refuses right
there, with a 429 before any byte is sent — and the engine's scheduler batches them
together. It yields `(choice, event)` as tokens come, the choices' events interleaved, and
keeps each generation's metrics by callbacks (api/metrics.py `GenerationMetrics`). Closing
the iterator (a client went away) cancels every generation, which frees their slots.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

from api.metrics import GenerationMetrics, Metrics
from api.models.registry import Events, LoadedModel
from runtime.events import Delta, Event, Finish, Usage
from runtime.request import GenerationRequest


@dataclass(frozen=True)
class Choice:
    """One generation of a request: its index in the answer and which prompt it continues."""

    index: int
    prompt_index: int
    request: GenerationRequest


def stream_events(
    model: LoadedModel, choices: Sequence[Choice], metrics: Metrics, heartbeat_s: float | None = None, prompt_param: str | None = None
) -> Iterator[tuple[Choice, Event]]:
    """Validate every choice and fit its prompt, then submit them all; their events come after, interleaved.

    Errors come from this call, before any byte is sent: a bad choice is a 400 before anything
    is queued (a prompt that does not fit is blamed on `prompt_param`: OpenAI names "messages",
    "prompt" or "input"), a saturated engine a 429 (QueueFullError). The runtime takes each
    fitted prompt as it is: nothing is validated twice. With `heartbeat_s`, a KeepAlive comes
    whenever a choice produced nothing for that long.
    """
    text = model.text()
    fitted = [text.prepare(choice.request, prompt_param) for choice in choices]
    submitted: list[tuple[Choice, Events]] = []
    try:
        for choice, fit in zip(choices, fitted):
            submitted.append((choice, text.generate(choice.request, heartbeat_s=heartbeat_s, fitted=fit)))
    except BaseException:
        for _, events in submitted:
            events.close()
        raise
    return _interleave(model, submitted, metrics)


def _interleave(model: LoadedModel, submitted: list[tuple[Choice, Events]], metrics: Metrics) -> Generator[tuple[Choice, Event], None, None]:
    """One event of each choice in turn (they advance together in the engine's batched steps),
    each seen by its metrics on the way. Closing this (a client went away) closes every
    choice's events, which cancels the generations and frees their slots."""
    stats = model.text().stats
    running = [(choice, events, GenerationMetrics(metrics, model.name, stats)) for choice, events in submitted]
    observed = [item[2] for item in running]
    try:
        if len(running) == 1:  # the usual request: one choice, read straight through
            choice, events, seen = running[0]
            try:
                for event in events:
                    if event.__class__ is not Delta or seen.first_token_at is None:  # a token after the first: nothing to count
                        seen.saw(event)
                    yield choice, event
            except Exception:
                seen.failed()
                raise
            return
        while running:
            for item in list(running):
                choice, events, seen = item
                try:
                    next_event = next(events, None)
                except Exception:
                    seen.failed()
                    raise
                if next_event is None:
                    running.remove(item)
                    continue
                seen.saw(next_event)
                yield choice, next_event
    finally:
        for _, events in submitted:
            events.close()
        for seen in observed:
            seen.close()


@dataclass
class Collected:
    """A choice's whole answer: text, tokens, log-probabilities, how it finished."""

    choice: Choice
    text: str
    deltas: list[Delta]
    finish: Finish


def collect(model: LoadedModel, choices: Sequence[Choice], metrics: Metrics, prompt_param: str | None = None) -> list[Collected]:
    """Run every choice to the end (non-streaming answers)."""
    return gather(choices, stream_events(model, choices, metrics, prompt_param=prompt_param))


def gather(choices: Sequence[Choice], events: Iterator[tuple[Choice, Event]]) -> list[Collected]:
    """Read submitted choices' events (from `stream_events`) to the end: each one's whole answer."""
    deltas: dict[int, list[Delta]] = {c.index: [] for c in choices}
    results = []
    for choice, event in events:
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
