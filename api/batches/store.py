"""The Files and Batch APIs' storage: file contents in one folder, every record in one SQLite file.

Every gunicorn worker opens the same folder (`serve --files-dir`; by default a private
temporary one for the server's lifetime), so a file uploaded through one worker is found by
the others, and a batch created through one is run by whichever worker takes it
(api/batches/runner.py). A file's content is `<folder>/<file id>`; its record (name,
purpose, size, time) a row of `files`. A batch is one row of `batches` holding its whole
`Batch` object as JSON; changes are read-modify-write inside one SQLite write transaction,
so two workers never lose each other's change (a cancel arriving while a line finishes).

The folder is bounded at each upload: one file at most `max_file_bytes` (read at most one
byte past it, so a chunked upload cannot fill the disk), all files together at most
`max_total_bytes`, at most `max_files` files. A batch's result files count in the totals but
are never refused: a batch that ran keeps its results; uploads are refused until files are
deleted.

While a batch runs, its finished lines are appended to `<folder>/<batch id>.output.partial`
and `.errors.partial`; at its end those become files of purpose "batch_output", under ids
chosen beforehand and recorded in the batch, so a worker that dies mid-way leaves a state
the next one completes (`publish` is idempotent).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from api.batches.bodies import Batch, FileObject
from api.errors import BodyTooLarge, NotFound

# Defaults of `appliance serve --files-*` (api/settings.py).
DEFAULT_MAX_FILE_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_FILES = 1000
# Statuses of a batch that still has work for a runner (validation, lines, publishing its files).
OPEN_STATUSES = ("validating", "in_progress", "cancelling", "finalizing")
_CHUNK = 1024 * 1024
_DATABASE = "files.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    batch TEXT NOT NULL
);
"""

_encode = msgspec.json.Encoder().encode
_decode_batch = msgspec.json.Decoder(Batch).decode


def new_id(prefix: str) -> str:
    """An id like OpenAI's: a prefix and 24 random hex digits."""
    return f"{prefix}{secrets.token_hex(12)}"


# Set (to "1") by the gunicorn host when it made the files folder itself (no --files-dir): the
# folder, and the batches in it, end with the server.
FILES_DIR_ENDS_WITH_SERVER = "APPLIANCE_FILES_DIR_ENDS_WITH_SERVER"


class Store:
    """Files and batch records in one folder; safe across threads and processes."""

    def __init__(
        self,
        directory: str | Path | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[str], str] = new_id,
        ends_with_server: bool = False,
    ) -> None:
        """`directory` None: a temporary folder, made at first use and removed by `close`.
        `ends_with_server`: `directory` is the server's own temporary folder (no --files-dir), so
        files and batches of an earlier run are gone; a 404 says so."""
        self._directory = Path(directory) if directory else None
        self._temporary = directory is None or directory == ""
        self._gone_hint = (
            " (this server keeps files and batches in a temporary folder that ends with it: those of an earlier run are gone;"
            " start it with --files-dir DIR to keep them across restarts)"
            if ends_with_server or self._temporary else ""
        )
        self.max_file_bytes, self.max_total_bytes, self.max_files = max_file_bytes, max_total_bytes, max_files
        self.clock = clock
        self.new_id = new_id
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    @property
    def folder(self) -> Path:
        """The folder of contents and records (made now if it does not exist yet)."""
        with self._lock:
            return self._open()[0]

    def _open(self) -> tuple[Path, sqlite3.Connection]:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="appliance-files-"))
        if self._connection is None:
            self._directory.mkdir(parents=True, exist_ok=True)
            # One connection shared by the worker's threads (serialised by the lock); other
            # processes wait for SQLite's file lock for up to 10 s.
            db = sqlite3.connect(self._directory / _DATABASE, timeout=10.0, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a batch line is counted only once its record is on disk (a power cut loses no line counted).
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._connection = db
        return self._directory, self._connection

    @contextmanager
    def _write(self) -> Iterator[tuple[Path, sqlite3.Connection]]:
        """One write transaction (other processes' writes wait for it)."""
        with self._lock:
            folder, db = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield folder, db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:
        with self._lock:
            return self._open()[1].execute(sql, args).fetchall()

    # -- files ------------------------------------------------------------------------

    def add_file(self, read: Callable[[int], bytes], filename: str, purpose: str) -> FileObject:
        """Store what `read(n)` gives until it gives b"" as a new file; 413 past a limit."""
        return self.keep(self.receive(read), filename, purpose)

    def receive(self, read: Callable[[int], bytes]) -> Path:
        """What `read(n)` gives until b"", in a temporary file of the folder (413 past the size
        limit); `keep` makes it a stored file, `discard` drops it."""
        fd, temporary = tempfile.mkstemp(prefix=".upload-", dir=self.folder)
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_file_bytes:
                        raise BodyTooLarge(f"the file is larger than this server's limit of {self.max_file_bytes} bytes per file (serve --files-max-bytes)")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(temporary)
            raise
        return Path(temporary)

    @staticmethod
    def discard(received: Path) -> None:
        received.unlink(missing_ok=True)

    def keep(self, received: Path, filename: str, purpose: str) -> FileObject:
        """The file `receive` wrote, stored under a new id; 413 (and discarded) past the folder's limits."""
        folder, temporary, size = self.folder, str(received), received.stat().st_size
        try:
            record = FileObject(id=self.new_id("file-"), bytes=size, created_at=int(self.clock()), filename=filename, purpose=purpose)
            with self._write() as (_, db):
                count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files").fetchone()
                if count >= self.max_files:
                    raise BodyTooLarge(f"this server already stores {count} files, its limit (serve --files-max-count); delete some (DELETE /v1/files/{{id}}) first")
                if total + size > self.max_total_bytes:
                    raise BodyTooLarge(
                        f"this file ({size} bytes) would take the stored files past this server's limit of {self.max_total_bytes} bytes "
                        f"({total} stored; serve --files-total-bytes); delete some (DELETE /v1/files/{{id}}) first"
                    )
                db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?)", (record.id, record.created_at, filename, purpose, size))
                os.replace(temporary, folder / record.id)
            return record
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def file(self, file_id: str) -> FileObject:
        rows = self._read("SELECT id, created_at, filename, purpose, bytes FROM files WHERE id = ?", (file_id,))
        if not rows:
            raise NotFound(f"no file with id '{file_id}'; GET /v1/files lists the stored files{self._gone_hint}", param="file_id")
        return _file(rows[0])

    def content_path(self, file_id: str) -> Path:
        """Where the content of the stored file `file_id` is (NotFound if it is not stored)."""
        self.file(file_id)
        return self.folder / file_id

    def files(self, purpose: str | None = None, limit: int = 10000, after: str | None = None, order: str = "desc") -> tuple[list[FileObject], bool]:
        """A page of files, newest first (`order` "desc") or oldest first; and whether more follow."""
        where, args = [], []
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        if after is not None:
            where.append(f"rowid {'<' if order == 'desc' else '>'} (SELECT rowid FROM files WHERE id = ?)")
            args.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        direction = "DESC" if order == "desc" else "ASC"
        rows = self._read(f"SELECT id, created_at, filename, purpose, bytes FROM files {clause} ORDER BY rowid {direction} LIMIT ?", (*args, limit + 1))
        return [_file(row) for row in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> None:
        with self._write() as (folder, db):
            if db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount == 0:
                raise NotFound(f"no file with id '{file_id}'; GET /v1/files lists the stored files{self._gone_hint}", param="file_id")
            (folder / file_id).unlink(missing_ok=True)

    def publish(self, partial: Path, file_id: str, filename: str, purpose: str) -> None:
        """Make the finished `partial` the stored file `file_id`; again after a crash, it does nothing twice."""
        folder = self.folder
        if partial.exists():
            os.replace(partial, folder / file_id)
        size = (folder / file_id).stat().st_size
        with self._write() as (_, db):
            db.execute("INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?)", (file_id, int(self.clock()), filename, purpose, size))

    # -- batches ----------------------------------------------------------------------

    def add_batch(self, batch: Batch) -> None:
        with self._write() as (_, db):
            db.execute("INSERT INTO batches VALUES (?, ?, ?)", (batch.id, batch.status, _encode(batch).decode()))

    def batch(self, batch_id: str) -> Batch:
        rows = self._read("SELECT batch FROM batches WHERE id = ?", (batch_id,))
        if not rows:
            raise NotFound(f"no batch with id '{batch_id}'; GET /v1/batches lists them{self._gone_hint}", param="batch_id")
        return _decode_batch(rows[0][0])

    def update_batch(self, batch_id: str, change: Callable[[Batch], Batch | None]) -> Batch:
        """Apply `change` to the batch as stored now, in one transaction; None from it: no change."""
        with self._write() as (_, db):
            row = db.execute("SELECT batch FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                raise NotFound(f"no batch with id '{batch_id}'; GET /v1/batches lists them{self._gone_hint}", param="batch_id")
            batch = _decode_batch(row[0])
            changed = change(batch)
            if changed is None:
                return batch
            db.execute("UPDATE batches SET status = ?, batch = ? WHERE id = ?", (changed.status, _encode(changed).decode(), batch_id))
            return changed

    def batches(self, limit: int = 10000, after: str | None = None) -> tuple[list[Batch], bool]:
        """A page of batches, newest first; and whether more follow."""
        clause, args = ("WHERE rowid < (SELECT rowid FROM batches WHERE id = ?)", (after,)) if after is not None else ("", ())
        rows = self._read(f"SELECT batch FROM batches {clause} ORDER BY rowid DESC LIMIT ?", (*args, limit + 1))
        return [_decode_batch(row[0]) for row in rows[:limit]], len(rows) > limit

    def open_batches(self) -> list[str]:
        """Ids of the batches with work left (OPEN_STATUSES), oldest first."""
        marks = ", ".join("?" for _ in OPEN_STATUSES)
        return [row[0] for row in self._read(f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY rowid", OPEN_STATUSES)]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            if self._temporary and self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None


def _file(row: tuple) -> FileObject:
    file_id, created_at, filename, purpose, size = row
    return FileObject(id=file_id, bytes=size, created_at=created_at, filename=filename, purpose=purpose)
