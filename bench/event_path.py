"""What the API's generation path costs per event, without an engine or HTTP.

A fake text model yields N Deltas and a Finish, doing no work of its own; the events go
through `stream_events` (validation, submission), the interleaving loop and the generation
metrics, as a request's do between the engine's event stream and the dialect's renderer. The
time per event is that path's share of each streamed token.

    python bench/event_path.py [--events 20000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.generation.runs import Choice, stream_events  # noqa: E402
from api.metrics import Metrics  # noqa: E402
from api.models.registry import LoadedModel  # noqa: E402
from runtime.events import Delta, Finish, Usage  # noqa: E402
from runtime.job import SchedulerStats  # noqa: E402
from runtime.request import GenerationRequest, fit_context  # noqa: E402
from tests.api.fakes import info  # noqa: E402


class Instant:
    """A text model whose events cost nothing to make."""

    def __init__(self, events: int) -> None:
        self.events = events

    def prepare(self, request, prompt_param=None):
        return fit_context(request.prompt_ids, request.max_tokens, 1 << 20, param=prompt_param)

    def generate(self, request, heartbeat_s=None, fitted=None):
        fitted = fitted or self.prepare(request)
        delta = Delta("x", (1,), ())
        for _ in range(self.events):
            yield delta
        yield Finish("length", Usage(len(fitted.ids), self.events, 0, 0, 1_000_000, 2_000_000))

    def stats(self) -> SchedulerStats:
        return SchedulerStats(16, 1, 0, 0, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--choices", type=int, default=1, help="choices per request (n): the interleaving path when above 1")
    args = parser.parse_args()
    model = LoadedModel(info("bench"), generator=Instant(args.events))
    metrics = Metrics()
    request = GenerationRequest((1, 2, 3), max_tokens=args.events)
    per_event = []
    for _ in range(args.rounds):
        choices = [Choice(i, 0, request) for i in range(args.choices)]
        start = time.perf_counter()
        count = sum(1 for _ in stream_events(model, choices, metrics, None, "messages"))
        per_event.append((time.perf_counter() - start) / count * 1e6)
    print(f"{statistics.median(per_event):.3f} µs per event (median of {args.rounds} rounds of {args.events} events x {args.choices} choices; min {min(per_event):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
