"""Progress: one line per step off a terminal, a final state for every step."""

from __future__ import annotations

import io

import pytest

from export.progress import Progress


def test_one_line_per_step_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream, live=False)
    with progress.step("loading"):
        pass
    with progress.step("validating", total=3) as step:
        for name in "abc":
            step.advance(detail=name)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[appliance] loading (") and lines[0].endswith(": done")
    assert "validating 3/3 c" in lines[1]
    assert "\r" not in stream.getvalue()


def test_failed_step_says_so_and_reraises():
    stream = io.StringIO()
    with pytest.raises(ValueError):
        with Progress(stream=stream, live=False).step("building"):
            raise ValueError("boom")
    assert stream.getvalue().rstrip().endswith(": FAILED")


def test_live_mode_redraws_then_ends_with_a_final_line():
    stream = io.StringIO()
    with Progress(stream=stream, live=True).step("fetching"):
        pass
    text = stream.getvalue()
    assert text.endswith(": done\n")
    assert "\r\033[K" in text
