"""Progress for long export steps.

On a terminal a step shows a live line (spinner, elapsed time, and a count when the step
knows its total) that is replaced by a final line when the step ends. Anywhere else (CI
logs, pipes) each step prints exactly one line when it ends, so logs stay readable.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


class Step:
    """One running step; `advance()` moves its counter when it has a total."""

    def __init__(self, progress: Progress, title: str, total: int | None) -> None:
        self.progress = progress
        self.title = title
        self.total = total
        self.done = 0
        self.detail = ""
        self.started = time.monotonic()
        self.last_report = self.started  # when a non-live Progress last printed this step's progress

    def advance(self, count: int = 1, detail: str = "") -> None:
        self.done += count
        if detail:
            self.detail = detail
        self.progress.advanced(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self) -> float | None:
        """Seconds left at the pace so far, once the step has a total and some of it done."""
        if not self.total or not 0 < self.done < self.total:
            return None
        return self.elapsed() * (self.total - self.done) / self.done

    def line(self) -> str:
        count = f" {self.done}/{self.total}" if self.total else ""
        detail = f" {self.detail}" if self.detail else ""
        eta = self.eta()
        left = f", about {eta:.0f} s left" if eta is not None else ""
        return f"{self.title}{count}{detail} ({self.elapsed():.1f} s{left})"


class Progress:
    """Reports steps to `stream` (stderr by default)."""

    def __init__(self, stream: IO[str] | None = None, prefix: str = "appliance", live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.live = self.stream.isatty() if live is None else live

    def note(self, message: str) -> None:
        """A one-off line outside any step."""
        print(f"[{self.prefix}] {message}", file=self.stream, flush=True)

    # Without a live line (logs, pipes), a long step still says how far it is this often.
    QUIET_INTERVAL = 15.0

    def advanced(self, step: Step) -> None:
        """A step's counter moved: the live line repaints by itself; elsewhere a line every
        QUIET_INTERVAL seconds tells how far the step is and how long it has left."""
        if self.live:
            return
        now = time.monotonic()
        if now - step.last_report >= self.QUIET_INTERVAL and step.done < (step.total or 0):
            step.last_report = now
            print(f"[{self.prefix}] {step.line()}", file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str, total: int | None = None, spinner: bool = True) -> Iterator[Step]:
        """Run a step; `spinner=False` lets a child process draw its own progress instead."""
        step = Step(self, title, total)
        stop = threading.Event()
        painter = None
        if self.live and spinner:
            painter = threading.Thread(target=self._paint, args=(step, stop), daemon=True)
            painter.start()
        ok = False
        try:
            yield step
            ok = True
        finally:
            stop.set()
            if painter:
                painter.join()
            clear = "\r\033[K" if self.live and spinner else ""
            mark = "done" if ok else "FAILED"
            print(f"{clear}[{self.prefix}] {step.line()}: {mark}", file=self.stream, flush=True)

    def _paint(self, step: Step, stop: threading.Event) -> None:
        for frame in itertools.cycle("|/-\\"):
            self.stream.write(f"\r\033[K[{self.prefix}] {frame} {step.line()}")
            self.stream.flush()
            if stop.wait(0.2):
                return


class Silent(Progress):
    """A Progress that prints nothing (library use, tests)."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stderr, live=False)

    def note(self, message: str) -> None:
        pass

    def advanced(self, step: Step) -> None:
        pass

    @contextmanager
    def step(self, title: str, total: int | None = None, spinner: bool = True) -> Iterator[Step]:
        yield Step(self, title, total)


class JsonLines(Progress):
    """One JSON object per line for a program to read: a step's start, each advance and its end.

    `{"event": "start" | "advance" | "done" | "failed", "title", "completed", "total"}` and
    `{"event": "note", "message"}`. The server's /api/pull runs the export in a child process
    and turns these lines into Ollama's progress lines.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream=stream or sys.stdout, live=False)

    def _emit(self, record: dict[str, object]) -> None:
        print(json.dumps(record, ensure_ascii=False), file=self.stream, flush=True)

    def note(self, message: str) -> None:
        self._emit({"event": "note", "message": message})

    def advanced(self, step: Step) -> None:
        self._emit({"event": "advance", "title": step.title, "completed": step.done, "total": step.total})

    @contextmanager
    def step(self, title: str, total: int | None = None, spinner: bool = True) -> Iterator[Step]:
        step = Step(self, title, total)
        self._emit({"event": "start", "title": title, "completed": 0, "total": total})
        ok = False
        try:
            yield step
            ok = True
        finally:
            self._emit({"event": "done" if ok else "failed", "title": title, "completed": step.done, "total": total, "seconds": round(step.elapsed(), 3)})
