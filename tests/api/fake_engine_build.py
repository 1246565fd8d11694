"""A stand-in for `python -m export.engines`, for the child-process builder's tests: same arguments, same JSON lines.

`--list` names `fake-built` and `fake-broken`; building `fake-built` writes a fake engine
directory (a manifest the tests' FakeLoader reads) after two counted steps; `fake-broken`
fails with an error line, as an export that fails does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", nargs="?")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--engines", type=Path)
    args = parser.parse_args()
    if args.list:
        print(json.dumps({"engines": {"fake-built": "a fake engine", "fake-broken": "a build that fails"}}))
        return 0
    print("some library's warning on the way", flush=True)  # lines that are not JSON are skipped
    emit(event="start", title="fetching fake-weights==1.0 from PyPI", completed=0, total=None)
    emit(event="done", title="fetching fake-weights==1.0 from PyPI", completed=0, total=None, seconds=0.0)
    emit(event="start", title="validating against the PyTorch model", completed=0, total=2)
    emit(event="advance", title="validating against the PyTorch model", completed=1, total=2)
    emit(event="advance", title="validating against the PyTorch model", completed=2, total=2)
    if args.name == "fake-broken":
        emit(event="failed", title="validating against the PyTorch model", completed=2, total=2, seconds=0.0)
        emit(event="error", message="the fake engine disagrees with the PyTorch model")
        return 2
    staging = args.engines / f".{args.name}.partial"
    staging.mkdir()
    (staging / "manifest.json").write_text(json.dumps({"name": args.name, "task": "text-generation", "files": {}}))
    staging.rename(args.engines / args.name)
    emit(event="done", title="validating against the PyTorch model", completed=2, total=2, seconds=0.0)
    emit(event="success", directory=str(args.engines / args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
