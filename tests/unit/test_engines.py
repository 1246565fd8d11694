"""`export.engines`: the engine names a server can build, and the JSON progress lines /api/pull reads."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.default_models import DEFAULT_MODELS
from export.engines import RECOMMENDED_PRECISION, buildable_engines, plan_for
from export.errors import SourceNotFoundError
from export.progress import JsonLines

ROOT = Path(__file__).resolve().parents[2]


def test_every_default_builds_under_the_names_export_gives_it() -> None:
    plans = buildable_engines()
    assert plans["smollm2-135m-instruct-int4"].precision == "int4"
    assert plans["smollm2-135m-instruct-fp32"].precision == "fp32"
    assert plans["smollm2-135m-instruct"].precision == RECOMMENDED_PRECISION
    assert plans["all-minilm-l6-v2"].precision == "fp32" and "all-minilm-l6-v2-int4" not in plans
    assert {plan.model.name for plan in plans.values()} == set(DEFAULT_MODELS)


def test_an_unknown_engine_name_lists_those_that_can_be_built() -> None:
    with pytest.raises(SourceNotFoundError, match="smollm2-135m-instruct-int8"):
        plan_for("llama3")


def test_json_progress_lines() -> None:
    out = io.StringIO()
    progress = JsonLines(out)
    with progress.step("validating", total=2) as step:
        step.advance(detail="first")
        step.advance()
    progress.note("written")
    with pytest.raises(RuntimeError), progress.step("building"):
        raise RuntimeError("boom")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["event"], r.get("completed"), r.get("total")) for r in records] == [
        ("start", 0, 2), ("advance", 1, 2), ("advance", 2, 2), ("done", 2, 2), ("note", None, None), ("start", 0, None), ("failed", 0, None),
    ]
    assert records[4]["message"] == "written" and records[-1]["title"] == "building"


def test_the_module_lists_and_refuses_as_json(tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "export.engines", "--list"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert set(json.loads(listed.stdout)["engines"]) == set(buildable_engines())
    refused = subprocess.run([sys.executable, "-m", "export.engines", "nope", "--engines", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2
    assert json.loads(refused.stdout.splitlines()[-1])["event"] == "error" and "nope" in refused.stdout
    assert list(tmp_path.iterdir()) == []
