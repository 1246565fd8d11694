"""Running batches in the background of a server worker, one at a time, a few lines at once.

Every gunicorn worker runs a `BatchRunner` thread. It looks for batches with work left
(`Store.open_batches`) and takes one only if it gets the batch's lock, an exclusive `flock`
on `<folder>/<batch id>.lock`: so exactly one worker runs a given batch, and a worker that
dies (killed, out of memory, a restart) lets go of it at once, without leases to expire.

A batch's lines run `--batch-slots` at a time (api/batches/lines.py `run_line`: the route's
own code, at background priority, so interactive requests keep their first-token times).
Each finished line is appended to the batch's partial output (or error) file and synced to
disk *before* it is counted in `request_counts`; so a worker that stops at any point loses
no finished line, and a later one resumes from the lines the partial files do not hold yet
(a line torn by a crash mid-write is cut off and runs again). Lines refused for overload
(429, or 503 while waiting for a slot) are not failures: they run again after a pause.

A batch ends when its lines are done (completed), when it is cancelled (cancelling: the
lines running are stopped and not written; the output holds what finished), or when its
completion window passes (expired: the lines not run go to the error file as
`batch_expired`). Its partial files then become stored files (`output_file_id`,
`error_file_id`). A server that drains (SIGTERM) stops the lines running without writing
them; the batch stays in_progress, and the next start resumes it — with `--files-dir`, since
the default folder ends with the server.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
from msgspec.structs import replace

from api.batches.bodies import Batch, BatchError, BatchErrors, BatchRequestCounts, BatchUsage, InputTokensDetails
from api.batches.lines import EMBEDDINGS, Interrupted, Line, read_input, run_line
from api.batches.store import Store
from api.context import ServerContext
from api.errors import NotFound, openai_error_body
from api.framing import describe_error
from api.models.residency import RequestLeases

log = logging.getLogger("appliance.batches")

# How often an idle runner looks for batches, and how often a running batch checks for a cancel.
POLL_S = 1.0
CHECK_S = 0.5
# How long a line refused for overload waits before it runs again.
RETRY_S = 1.0
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


@dataclass
class Progress:
    """What a batch's partial files hold: the lines done, their counts and their tokens."""

    done: set[str] = field(default_factory=set)
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    def add(self, record: dict[str, Any]) -> None:
        self.done.add(record["custom_id"])
        response = record.get("response")
        if response is None or response.get("status_code") != 200:
            self.failed += 1
            return
        self.completed += 1
        usage = response.get("body", {}).get("usage") or {}
        self.input_tokens += usage.get("prompt_tokens", 0)
        self.output_tokens += usage.get("completion_tokens", 0)
        self.cached_tokens += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)

    def apply(self, batch: Batch) -> Batch:
        usage = BatchUsage(
            input_tokens=self.input_tokens, input_tokens_details=InputTokensDetails(cached_tokens=self.cached_tokens),
            output_tokens=self.output_tokens, total_tokens=self.input_tokens + self.output_tokens,
        )  # fmt: skip
        counts = BatchRequestCounts(total=batch.request_counts.total, completed=self.completed, failed=self.failed)
        return replace(batch, request_counts=counts, usage=usage)


def read_partial(path: Path) -> list[dict[str, Any]]:
    """The records of a partial file; a last line torn by a crash is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: cutting off a line torn by a crash (%d bytes); that line runs again", path.name, len(data) - end)
        with open(path, "r+b") as file:
            file.truncate(end)
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


@contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (True), or find another process or thread holds it (False)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # lets go of the lock


class BatchRunner:
    """Runs the batches of a server's store in this worker's background."""

    def __init__(self, ctx: ServerContext, poll_s: float = POLL_S) -> None:
        self.ctx = ctx
        self.store: Store = ctx.files
        self.poll_s = poll_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the lines running (unwritten: they run again later) and the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _halted(self) -> bool:
        return self._stopping.is_set() or self.ctx.draining

    def _loop(self) -> None:
        while not self._halted():
            if self.ctx.registry.state == "ready":
                try:
                    self.run_once()
                except Exception:  # a broken batch must not end the runner
                    log.exception("the batch runner failed; it tries again in %.0f s", self.poll_s)
            self._stopping.wait(self.poll_s)

    def run_once(self) -> None:
        """Work on every batch with work left that no other worker holds, oldest first."""
        for batch_id in self.store.open_batches():
            if self._halted():
                return
            with exclusive(self.store.folder / f"{batch_id}.lock") as held:
                if held:
                    self._work(batch_id)

    # -- one batch ------------------------------------------------------------------------

    def _partial(self, batch_id: str, kind: str) -> Path:
        return self.store.folder / f"{batch_id}.{kind}.partial"

    def _work(self, batch_id: str) -> None:
        batch = self.store.batch(batch_id)  # as it is now that this worker holds it
        expired = False
        if batch.status in ("in_progress", "cancelling"):
            outcome = self._run_lines(batch)
            if outcome is None:
                return  # halted: the batch stays in_progress for the next start
            expired = outcome
        if batch.status in ("in_progress", "cancelling", "finalizing"):
            self._finalize(batch_id, expired)

    def _run_lines(self, batch: Batch) -> bool | None:
        """Run the lines not done yet: False when they all ran or the batch was cancelled, True
        when its window passed first, None when this worker stopped first."""
        store = self.store
        try:
            lines, _ = read_input(store.content_path(batch.input_file_id), batch.endpoint)
        except NotFound:
            message = f"the input file {batch.input_file_id} was deleted before every line ran; the results of the lines that ran are kept"
            store.update_batch(batch.id, lambda b: replace(b, errors=BatchErrors(data=[BatchError(code="input_file_missing", message=message)])))
            return False
        progress = Progress()
        for kind in ("output", "errors"):
            for record in read_partial(self._partial(batch.id, kind)):
                progress.add(record)
        batch = store.update_batch(batch.id, progress.apply)
        pending = deque(line for line in lines if line.custom_id not in progress.done)
        if progress.done:
            log.info("batch %s: resuming, %d of %d lines done", batch.id, len(progress.done), len(lines))
        run = _Run(self, batch, pending, progress)
        try:
            run.go()
        finally:
            run.close()
        if run.expired:
            for line in pending:  # never run: failed, as OpenAI reports them
                run.write(line, None, {"code": "batch_expired", "message": EXPIRED_MESSAGE})
            return True
        if run.cancelled or not pending:
            return False
        return None

    def _finalize(self, batch_id: str, expired: bool) -> None:
        """Publish the partial files as the batch's result files, then give it its last status."""
        output, errors = self._partial(batch_id, "output"), self._partial(batch_id, "errors")
        now = int(self.ctx.clock())

        def finalizing(b: Batch) -> Batch | None:
            if b.status not in ("in_progress", "cancelling", "finalizing"):
                return None
            return replace(
                b, status="finalizing", finalizing_at=b.finalizing_at or now,
                output_file_id=b.output_file_id or (self.store.new_id("file-") if _holds_lines(output) else None),
                error_file_id=b.error_file_id or (self.store.new_id("file-") if _holds_lines(errors) else None),
                expired_at=b.expired_at or (now if expired else None),
            )  # fmt: skip

        batch = self.store.update_batch(batch_id, finalizing)
        if batch.status != "finalizing":
            return
        for file_id, partial, kind in ((batch.output_file_id, output, "output"), (batch.error_file_id, errors, "error")):
            if file_id is not None:
                self.store.publish(partial, file_id, f"{batch_id}_{kind}.jsonl", "batch_output")
        for partial in (output, errors):
            partial.unlink(missing_ok=True)

        def last(b: Batch) -> Batch:
            if b.cancelling_at is not None:
                return replace(b, status="cancelled", cancelled_at=now)
            if b.errors is not None:
                return replace(b, status="failed", failed_at=now)
            if b.expired_at is not None:
                return replace(b, status="expired")
            return replace(b, status="completed", completed_at=now)

        batch = self.store.update_batch(batch_id, last)
        counts = batch.request_counts
        log.info("batch %s: %s, %d of %d lines completed, %d failed", batch_id, batch.status, counts.completed, counts.total, counts.failed)
        (self.store.folder / f"{batch_id}.lock").unlink(missing_ok=True)


def _holds_lines(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


class _Run:
    """One batch's lines running on a few threads, until done, cancelled, expired or halted."""

    def __init__(self, runner: BatchRunner, batch: Batch, pending: deque[Line], progress: Progress) -> None:
        self.runner, self.ctx, self.store = runner, runner.ctx, runner.store
        self.batch, self.pending, self.progress = batch, pending, progress
        self.stop = threading.Event()
        self.cancelled = self.expired = False
        self._lock = threading.Lock()
        self._files: dict[str, BinaryIO] = {}
        self._running = 0

    def go(self) -> None:
        """Run the pending lines on `batch_slots` threads (one for embeddings); check for a cancel meanwhile."""
        if self._check():
            return
        count = 1 if self.batch.endpoint == EMBEDDINGS else self.ctx.settings.batch_slots
        threads = [threading.Thread(target=self._lines, name=f"batch-line-{i}", daemon=True) for i in range(min(count, len(self.pending)))]
        for thread in threads:
            thread.start()
        while alive := [thread for thread in threads if thread.is_alive()]:
            alive[0].join(CHECK_S)
            if not self.stop.is_set() and self._check():
                self.stop.set()
        for thread in threads:
            thread.join()

    def _check(self) -> bool:
        """Whether the batch must stop now: cancelled, past its window, or this worker halting."""
        batch = self.store.batch(self.batch.id)
        if batch.status == "cancelling":
            self.cancelled = True
        elif batch.expires_at is not None and self.ctx.clock() >= batch.expires_at:
            self.expired = True
        return self.cancelled or self.expired or self.runner._halted()

    def _next(self) -> Line | None:
        with self._lock:
            if self.stop.is_set() or not self.pending:
                return None
            return self.pending.popleft()

    def _lines(self) -> None:
        while (line := self._next()) is not None:
            try:
                self._line(line)
            except Exception:  # a failure to write: the line goes back, the batch stops here
                log.exception("batch %s: could not record line %d", self.batch.id, line.number)
                self._put_back(line)
                self.stop.set()

    def _put_back(self, line: Line) -> None:
        with self._lock:
            self.pending.appendleft(line)

    def _line(self, line: Line) -> None:
        leases = RequestLeases()  # the models the line uses stay loaded until it is done
        try:
            reply = run_line(self.ctx, self.batch.endpoint, line.body, self.stop)
        except Interrupted:
            self._put_back(line)
            return
        except Exception as exc:
            status, message, param, code = describe_error(exc)
            if status in (429, 503) and not self.stop.is_set():  # overloaded, or no slot in time: later, not a failure
                self._put_back(line)
                self.stop.wait(RETRY_S)
                return
            if status >= 500:
                log.error("batch %s: line %d failed: %s", self.batch.id, line.number, message)
            self.write(line, (status, msgspec.to_builtins(openai_error_body(status, message, param, code))), None)
            return
        finally:
            leases.release()
        self.write(line, (200, msgspec.to_builtins(reply)), None)

    def write(self, line: Line, response: tuple[int, Any] | None, error: dict[str, str] | None) -> None:
        """Append the line's record to the output (200) or error file, on disk, then count it."""
        record: dict[str, Any] = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": line.custom_id, "response": None, "error": error}
        if response is not None:
            status, body = response
            record["response"] = {"status_code": status, "request_id": f"req_{secrets.token_hex(12)}", "body": body}
        kind = "output" if response is not None and response[0] == 200 else "errors"
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            file = self._files.get(kind)
            if file is None:
                file = self._files[kind] = open(self.runner._partial(self.batch.id, kind), "ab")
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            self.progress.add(record)
            self.batch = self.store.update_batch(self.batch.id, self.progress.apply)

    def close(self) -> None:
        for file in self._files.values():
            file.close()
