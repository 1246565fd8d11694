"""Engines a server can build by name: `smollm2-135m-instruct-int4` → pull the default, export it.

An engine name is a default model's name (export/default_models.py), for decoders with the
precision `appliance export` puts in its default output name (`-fp32`, `-int8`, `-int4`);
a decoder's bare name builds the precision `make serve` builds (int4) under that bare name.
Embedding models are built at fp32 under their own name, as `make engines` does.

The server's `POST /api/pull` runs this module in a child process, so that a serving worker
never imports torch or transformers (they stay in the child, and leave with it):

    python -m export.engines --list                      # {"engines": {name: description}}
    python -m export.engines NAME --engines DIR          # progress as JSON lines, then the result

Progress lines are `export.progress.JsonLines`'; the last line is `{"event": "success",
"directory": ...}` or `{"event": "error", "message": ...}` (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export.default_models import DEFAULT_MODELS, DefaultModel
from export.errors import ExportError, SourceNotFoundError
from export.options import ExportOptions, ExportResult
from export.pipeline import export_model
from export.progress import JsonLines, Progress
from runtime.errors import ApplianceError
from runtime.manifest import TASK_TEXT_GENERATION

# What a decoder's bare name builds: the engine `make serve` serves (docs/performance.md says why).
RECOMMENDED_PRECISION = "int4"
DECODER_PRECISIONS = ("fp32", "int8", "int4")


@dataclass(frozen=True)
class EnginePlan:
    """How one engine name is built: which default model, at which precision."""

    name: str
    model: DefaultModel
    precision: str

    @property
    def description(self) -> str:
        return f"{self.model.description}, exported at {self.precision}"


def buildable_engines() -> dict[str, EnginePlan]:
    """Every engine name this package can build, in a stable order."""
    plans: dict[str, EnginePlan] = {}
    for model in DEFAULT_MODELS.values():
        if model.task == TASK_TEXT_GENERATION:
            plans[model.name] = EnginePlan(model.name, model, RECOMMENDED_PRECISION)
            for precision in DECODER_PRECISIONS:
                name = f"{model.name}-{precision}"
                plans[name] = EnginePlan(name, model, precision)
        else:
            plans[model.name] = EnginePlan(model.name, model, "fp32")
    return plans


def plan_for(name: str) -> EnginePlan:
    """The plan for `name`, or a one-line error listing the names that can be built."""
    plans = buildable_engines()
    if name not in plans:
        raise SourceNotFoundError(f"no default model builds an engine called {name!r}; the engines that can be built are {', '.join(plans)}")
    return plans[name]


def build_engine(
    name: str,
    engines_dir: Path | str,
    *,
    cache_dir: Path | str | None = None,
    pip_args: Sequence[str] = (),
    progress: Progress | None = None,
) -> ExportResult:
    """Pull the default model behind `name` (unless cached) and export it to engines_dir/name."""
    plan = plan_for(name)
    out = Path(engines_dir) / plan.name
    return export_model(plan.model.name, out, ExportOptions(precision=plan.precision), cache_dir=cache_dir, pip_args=pip_args, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.engines", description="Build a named engine, reporting progress as JSON lines.")
    parser.add_argument("name", nargs="?", metavar="NAME", help="the engine to build")
    parser.add_argument("--list", action="store_true", help="print the engine names that can be built, as JSON")
    parser.add_argument("--engines", type=Path, help="the folder of engine directories to build into")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache (default: $APPLIANCE_CACHE or ~/.cache/appliance)")
    parser.add_argument("--pip-arg", action="append", default=[], help="extra argument for `pip download`; repeatable")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps({"engines": {name: plan.description for name, plan in buildable_engines().items()}}))
        return 0
    if not args.name or args.engines is None:
        parser.error("give NAME and --engines DIR (or --list)")
    progress = JsonLines()
    try:
        result = build_engine(args.name, args.engines, cache_dir=args.cache_dir, pip_args=args.pip_arg, progress=progress)
    except (ExportError, ApplianceError) as exc:
        print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        return 2
    except ImportError as exc:  # a serving-only install: torch, transformers and optimum are not there
        print(json.dumps({"event": "error", "message": f"building engines needs the export dependencies (pip install -e '.[export]'): {exc}"}), flush=True)
        return 2
    except KeyboardInterrupt:
        print(json.dumps({"event": "error", "message": "the build was interrupted; nothing was left half-written"}), flush=True)
        return 130
    print(json.dumps({"event": "success", "directory": str(result.directory), "seconds": round(result.seconds, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
