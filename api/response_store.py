"""Stored responses of the Responses API: bounded, expiring, shared by every worker of a server.

A response created with `store` (the default) is kept so that GET /v1/responses/{id} returns
it and `previous_response_id` continues its conversation. Each record holds the response
object, its own input items and the chat messages they and its output became, and the id of
the response it continued: a conversation is rebuilt by walking those links, so a chain of
N turns costs N records, not N².

The store is one SQLite file (every gunicorn worker opens the same file, so a response made
by one worker is found by the others), or memory in a single process (tests, `:memory:`).
It is bounded three ways, enforced on every write: records older than `ttl_s` are dropped,
then the oldest ones beyond `max_records` or `max_bytes`. A conversation whose earlier turn
was dropped can no longer be continued; the error says so.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Defaults of `appliance serve --response-store-*` (api/settings.py).
DEFAULT_MAX_RECORDS = 1000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_TTL_S = 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    previous_id TEXT,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    messages TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
"""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    created: float
    previous_id: str | None
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    # The chat messages of this turn: its input's, then its output's.
    messages: list[dict[str, Any]]


class ResponseStore:
    """Stored responses in one SQLite database; safe across threads and processes."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.max_records, self.max_bytes, self.ttl_s = max_records, max_bytes, ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        # One connection shared by the worker's threads (serialised by the lock); other
        # processes wait for SQLite's file lock for up to 10 s.
        self._db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            # WAL lets workers read while one writes; NORMAL syncs at checkpoints, not every commit
            # (a power cut may lose the last responses, a crashed worker loses none).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @property
    def enabled(self) -> bool:
        return self.max_records > 0

    def put(self, record: StoredResponse) -> None:
        if not self.enabled:
            return
        response, items, messages = (json.dumps(v, ensure_ascii=False) for v in (record.response, record.input_items, record.messages))
        size = len(response) + len(items) + len(messages)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.created, record.previous_id, response, items, messages, size),
                )
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _evict(self) -> None:
        self._db.execute("DELETE FROM responses WHERE created < ?", (self.clock() - self.ttl_s,))
        self._db.execute(
            "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created DESC, rowid DESC LIMIT -1 OFFSET ?)",
            (self.max_records,),
        )
        # The newest records whose sizes add up to at most max_bytes stay.
        (stored,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
        if stored <= self.max_bytes:
            return
        rows = self._db.execute("SELECT id, size FROM responses ORDER BY created DESC, rowid DESC").fetchall()
        total, dropped = 0, []
        for row_id, size in rows:
            total += size
            if total > self.max_bytes:
                dropped.append((row_id,))
        self._db.executemany("DELETE FROM responses WHERE id = ?", dropped)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, created, previous_id, response, input_items, messages FROM responses WHERE id = ? AND created >= ?",
                (response_id, self.clock() - self.ttl_s),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), json.loads(row[5]))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def chain(self, response_id: str, limit: int) -> list[StoredResponse]:
        """The conversation that ends with `response_id`, oldest turn first.

        Raises LookupError naming the first turn that is not (or no longer) stored, and
        ValueError for a chain longer than `limit` turns.
        """
        turns: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None:
            record = self.get(next_id)
            if record is None:
                raise LookupError(next_id)
            turns.append(record)
            if len(turns) > limit:
                raise ValueError(limit)
            next_id = record.previous_id
        turns.reverse()
        return turns

    def close(self) -> None:
        with self._lock:
            self._db.close()
