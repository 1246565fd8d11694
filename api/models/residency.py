"""Which served models are loaded in this worker, and for how long: leases, keep-alive, unloading.

Ollama's model lifecycle, per worker process:

- A request *leases* each model it uses (`ModelRegistry.use`), and gives it back when its
  answer has been sent — for a stream, when the stream closes. The HTTP boundary
  (`api/app.py`) opens a `RequestLeases` per request, so every route's look-ups are
  leased without routes doing anything.
- When the last lease ends, the model's keep-alive starts: the request's own `keep_alive`
  if it sent one (Ollama's routes), else the server's `--keep-alive` (default: forever,
  `FOREVER`). 0 unloads the model at once, if it is idle.
- A model whose keep-alive ran out is unloaded by the `Reaper` thread, only once it is idle:
  no lease, and no generation still queued or running on its scheduler. Unloading closes
  the scheduler thread and drops the engine (ONNX Runtime session, KV pool); the model
  stays served, and the next request loads it again.

With several gunicorn workers each worker holds its own copy and unloads it on its own.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from runtime.memory import release_free_memory

# A keep-alive that never ends (Ollama: a negative keep_alive).
FOREVER = math.inf
# How soon a model that expired while still busy is looked at again.
BUSY_RETRY_S = 0.25

log = logging.getLogger("appliance.api")


class Resident(Protocol):
    """A loaded model as residency sees it."""

    def busy(self) -> bool:
        """Whether generations are still queued or running on it."""
        ...

    def close(self) -> None:
        """Free the engine (stop its threads); called once, when it is idle."""
        ...


R = TypeVar("R", bound=Resident)


class Residency(Generic[R]):
    """One served model's loaded copy in this worker: who holds it, and when it may go.

    Every method is called with the owning registry's lock held, except `load_or_get`
    (which takes the residency's own load lock, so that a load never blocks other models).
    """

    def __init__(self, loaded: R | None, load: Callable[[], R] | None, clock: Callable[[], float]) -> None:
        self.loaded = loaded
        # None: this model cannot be loaded again (a registry of fakes), so it is never unloaded.
        self._load = load
        self._clock = clock
        self._load_lock = threading.Lock()
        self.leases = 0
        self.keep_alive_s = FOREVER
        # Monotonic time when the keep-alive runs out (None: in use, or forever, or not loaded).
        self.expires_at: float | None = None
        # Deleted (or gone from the disk): unloaded once idle, never loaded again.
        self.removed = False

    @property
    def can_unload(self) -> bool:
        return self._load is not None

    def lease(self, keep_alive_s: float) -> None:
        """A request takes the model; its keep-alive applies once every holder is done (Ollama's rule: the latest request's)."""
        self.leases += 1
        self.keep_alive_s = keep_alive_s
        self.expires_at = None

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0 and self.loaded is not None:
            self._start_keep_alive()

    def _start_keep_alive(self) -> None:
        if self.removed or self.keep_alive_s <= 0:
            self.expires_at = self._clock()
        elif math.isfinite(self.keep_alive_s) and self.can_unload:
            self.expires_at = self._clock() + self.keep_alive_s
        else:
            self.expires_at = None

    def expire_now(self) -> None:
        """Ollama's unload call (keep_alive 0): unload as soon as the model is idle."""
        self.keep_alive_s = 0.0
        if self.leases == 0 and self.loaded is not None:
            self.expires_at = self._clock()

    def remaining_s(self) -> float:
        """Seconds the keep-alive has left, as /api/ps reports it (FOREVER: never expires)."""
        if self.expires_at is not None:
            return max(0.0, self.expires_at - self._clock())
        if self.leases and math.isfinite(self.keep_alive_s) and self.can_unload:
            return max(0.0, self.keep_alive_s)  # in use: the keep-alive starts when it is given back
        return FOREVER

    def take_if_due(self, now: float) -> R | None:
        """The loaded model, detached, if its time is up and it is idle; the caller closes it."""
        if self.loaded is None or self.leases or self.expires_at is None or self.expires_at > now:
            return None
        if not (self.can_unload or self.removed):
            return None
        if self.loaded.busy():  # a generation outside any lease (library use): look again shortly
            self.expires_at = now + BUSY_RETRY_S
            return None
        loaded, self.loaded, self.expires_at = self.loaded, None, None
        return loaded

    def load_or_get(self, lock: threading.Lock) -> tuple[R, int]:
        """The loaded model, loading it first if needed: (model, nanoseconds this call spent loading)."""
        with self._load_lock:
            with lock:
                if self.loaded is not None:
                    return self.loaded, 0
                if self._load is None or self.removed:
                    raise LookupError("this model is no longer available")
                load = self._load
            started = time.perf_counter_ns()
            model = load()
            with lock:
                self.loaded = model
                if self.leases == 0:
                    self._start_keep_alive()
            return model, time.perf_counter_ns() - started


class Reaper:
    """A thread that unloads models whose keep-alive ran out; started at the first expiry."""

    def __init__(self, lock: threading.Lock, residencies: Callable[[], Iterable[Residency]], clock: Callable[[], float]) -> None:
        self._lock = lock
        self._residencies = residencies
        self._clock = clock
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """An expiry changed: look again now."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-reaper", daemon=True)
            self._thread.start()
        self._wake.set()

    def sweep(self) -> float | None:
        """Unload every model that is due; seconds until the next expiry (None: none pending)."""
        now = self._clock()
        due: list[Resident] = []
        with self._lock:
            residencies = list(self._residencies())
            for residency in residencies:
                taken = residency.take_if_due(now)
                if taken is not None:
                    due.append(taken)
            pending = [r.expires_at for r in residencies if r.expires_at is not None and r.loaded is not None]
        for model in due:
            close_quietly(model)
        return max(0.0, min(pending) - self._clock()) if pending else None

    def _run(self) -> None:
        while True:
            wait = self.sweep()
            self._wake.wait(wait)
            self._wake.clear()


def close_quietly(model: Resident) -> None:
    try:
        model.close()
    except Exception:  # an engine that fails to close is still dropped; say so in the log
        log.exception("unloading a model failed")
    release_free_memory()  # an unloaded engine's freed heap goes back to the system


# -- leases held by one request ------------------------------------------------------------

_current: contextvars.ContextVar[RequestLeases | None] = contextvars.ContextVar("appliance_request_leases", default=None)


class RequestLeases:
    """The models one request holds; `release()` gives them all back, once."""

    def __init__(self) -> None:
        self._releases: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._token: contextvars.Token[RequestLeases | None] | None = _current.set(self)

    @staticmethod
    def current() -> RequestLeases | None:
        """The leases of the request this thread is answering (None outside a request)."""
        return _current.get()

    def add(self, release: Callable[[], None]) -> None:
        with self._lock:
            self._releases.append(release)

    def detach(self) -> None:
        """Stop collecting on this thread (the answer is built; a stream may still hold the leases)."""
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:  # reset from another context: just clear it
                _current.set(None)
            self._token = None

    def release(self) -> None:
        self.detach()
        with self._lock:
            releases, self._releases = self._releases, []
        for release in releases:
            release()

    def until_closed(self, frames: Iterable[bytes]) -> HeldStream:
        """`frames`, holding the leases until the server has sent them all or closed the stream."""
        self.detach()
        return HeldStream(frames, self)


class HeldStream:
    """A WSGI response iterable that gives its request's leases back when it is closed or exhausted."""

    def __init__(self, frames: Iterable[bytes], leases: RequestLeases) -> None:
        self._frames: Iterator[bytes] = iter(frames)
        self._source = frames
        self._leases = leases

    def __iter__(self) -> HeldStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._frames)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()  # a generation still running is cancelled first
        finally:
            self._leases.release()
