"""A generation on its way through the scheduler (`Job`: its sequence, slot, progress, deadline
and event queue, read by the request's thread), and what the scheduler reports (`SchedulerStats`)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.errors import RequestTimeoutError
from runtime.events import KEEP_ALIVE, Event, Finish

if TYPE_CHECKING:  # annotations only
    from runtime.sequence import SequenceState
    from runtime.speculation import Drafter

# How long past its deadline a reader waits for the scheduler to end an overdue job before it
# gives up on its own (the scheduler is stuck in a step that does not return).
OVERDUE_GRACE_S = 10.0


@dataclass(eq=False)
class Job:
    """One generation on its way through the scheduler."""

    state: SequenceState
    submitted_ns: int
    events: queue.SimpleQueue[Event | BaseException] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    slot: int | None = None
    prefilled: int = 0  # prompt tokens already in the cache
    cached_tokens: int = 0  # prompt tokens found in the cache at admission (prefix reuse)
    next_token: int | None = None  # the token the next decode step feeds
    prefill_started_ns: int = 0
    eval_started_ns: int = 0
    finished: bool = False
    # Wall-clock limit of the request in seconds (None: none) and the time.monotonic() it ends at.
    timeout_s: float | None = None
    deadline: float | None = None
    # With speculation: the drafter over the prompt and the tokens generated so far.
    drafter: Drafter | None = None
    # A background job (a batch line): it runs only in what interactive jobs leave (runtime/scheduler.py).
    background: bool = False

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.state.fitted.ids

    @property
    def held_slot(self) -> int:
        """The slot of an admitted job; the scheduler gives it one before any step for it."""
        assert self.slot is not None, "the job holds no slot"
        return self.slot

    @property
    def held_token(self) -> int:
        """The token a decoding job's next step feeds; it has one once its prompt is read."""
        assert self.next_token is not None, "the job has no token to feed"
        return self.next_token

    def events_until_finish(self, heartbeat_s: float | None = None) -> Iterator[Event]:
        """The job's events as the scheduler produces them, ending with its Finish.

        With `heartbeat_s`, a KEEP_ALIVE comes whenever that long passed without an event.
        """
        while True:
            wait = heartbeat_s
            if self.deadline is not None:
                left = self.deadline + OVERDUE_GRACE_S - time.monotonic()
                if left <= 0:
                    raise RequestTimeoutError(
                        f"the request passed its time limit of {self.timeout_s:g} s and the engine did not stop it within "
                        f"{OVERDUE_GRACE_S:g} s more; the server log may say why"
                    )
                wait = left if wait is None else min(wait, left)
            try:
                item = self.events.get() if wait is None else self.events.get(timeout=wait)
            except queue.Empty:
                if heartbeat_s is not None:
                    yield KEEP_ALIVE
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finish):
                return


@dataclass(frozen=True)
class SchedulerStats:
    """What the scheduler holds right now."""

    slots: int
    active: int  # jobs holding a slot (prefilling or decoding)
    waiting: int  # jobs queued for a slot (interactive and background)
    steps: int  # batched decode steps run so far
    tokens: int  # tokens generated so far
    prefix_hits: int = 0  # admissions that found part of their prompt cached
    cached_tokens: int = 0  # prompt tokens those admissions did not evaluate again
    speculation: str | None = None  # the speculation method in use (None: none)
    speculative_steps: int = 0  # speculative steps run (one per speculating sequence and step)
    speculative_tokens: int = 0  # tokens those steps produced
    draft_tokens: int = 0  # drafted tokens they checked
    accepted_tokens: int = 0  # of those, the ones kept
    background_active: int = 0  # of `active`, background (batch) jobs
    background_waiting: int = 0  # of `waiting`, background jobs
