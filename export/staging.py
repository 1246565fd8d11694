"""An export's output, all or nothing: the engine is built in a hidden sibling folder and renamed
into place at the end; leftovers of exports killed outright are removed by the next export."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from export.errors import DestinationExistsError
from export.options import ExportOptions


def check_destination(target: Path, options: ExportOptions) -> None:
    if target.exists() and not options.force:
        raise DestinationExistsError(f"{target} already exists; pass --force to replace it or choose another --out")
    if target.exists() and not target.is_dir():
        raise DestinationExistsError(f"{target} exists and is not a directory; choose another --out")


def remove_stale_staging(target: Path) -> None:
    """Delete staging folders that exports killed outright (SIGKILL, power loss) left behind."""
    for folder in target.parent.glob(f".{target.name}.partial-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder with our own pid can only be a leftover of an earlier run
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished directory onto `target`, replacing an old one only at the end."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
