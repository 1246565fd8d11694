"""The engines folder as Ollama's model store: names, locks, delete and copy.

Requests change the folder only in ways other workers can never see half done:

- An engine directory appears by a rename of a finished hidden staging directory (the export
  does the same), and goes by a rename to a hidden name, then `rmtree`. Listings skip hidden
  names, so another worker's rescan sees a whole engine or none.
- Work on one name (a pull's build, a delete, a copy's destination) holds that name's lock
  file, `.<name>.lock` in the folder (`flock`, so a process that dies lets go of it).

A worker that still has a deleted engine loaded keeps answering with it until its next
listing, or until it is idle (the open files stay readable on POSIX systems), then forgets it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from api.errors import BadRequest, Forbidden, NotSupported
from api.models.registry import ModelRegistry
from api.settings import ServerSettings
from runtime.manifest import MANIFEST_FILE

# What an engine directory may be called: what `appliance export` names them (export/sources.py).
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
LATEST = ":latest"


def engine_name(value: str | None, param: str) -> str:
    """A model name from a request as an engine directory name: ':latest' dropped, anything odd a 400."""
    if not value:
        raise BadRequest(f"'{param}' is required", param=param)
    name = value[: -len(LATEST)] if value.endswith(LATEST) else value
    if ":" in name:
        raise BadRequest(f"'{param}': tag '{name.split(':', 1)[1]}' is not available; engines have one version each, ':latest'", param=param)
    if not _NAME.match(name) or name.endswith("."):
        raise BadRequest(
            f"'{param}': {value!r} is not a valid model name; use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
            param=param,
        )
    return name


def writable_folder(registry: ModelRegistry, settings: ServerSettings, action: str) -> Path:
    """The engines folder a request may change, or the reason it may not (a 403, or a 400 for a single-engine server)."""
    if settings.read_only_engines:
        raise Forbidden(f"{action} is turned off on this server (--read-only-engines): requests do not change its engines folder")
    folder = registry.engines_folder
    if folder is None:
        raise NotSupported(f"{action} needs a folder of engines, and this server serves one engine directory (--engines points at an engine)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Forbidden(f"{action} needs to write to the engines folder {folder}, and this server's process may not; make it writable or use --read-only-engines")
    return folder


@contextmanager
def name_lock(folder: Path, name: str, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold `name`'s lock in `folder` (every worker, every process); yields whether it was free at once.

    When another holds it, `on_wait` is called, then this waits for it.
    """
    with open(folder / f".{name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
            free = False
        try:
            yield free
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def delete_engine(directory: Path) -> None:
    """Remove an engine directory: renamed to a hidden name first (gone for every listing at once), then deleted."""
    doomed = directory.parent / f".{directory.name}.deleted-{os.getpid()}-{secrets.token_hex(4)}"
    directory.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def copy_engine(source: Path, destination: Path) -> None:
    """Copy an engine directory to `destination`, which then serves under its own name.

    The model's name is its manifest's `name`, so the copy's manifest gets the destination's;
    the manifest's hashes cover the other files, which are unchanged. Files are hard links
    where the file system allows (engine files are never written again), else copies; the
    copy is built in a hidden staging directory and renamed into place when whole.
    """
    staging = destination.parent / f".{destination.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(MANIFEST_FILE))
        manifest = json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))
        manifest["name"] = destination.name
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, destination)
