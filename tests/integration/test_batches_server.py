"""The Batch API through the real server (gunicorn, two workers sharing one files folder, the
tiny engine) and the official openai SDK: each line answered as the endpoint answers the same
body, exactly one worker running a batch, cancel, and a restart resuming a batch mid-way."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.server import Server

pytestmark = pytest.mark.integration


def start(engine: Path, folder: Path, log: str) -> Server:
    return Server(engine, folder / log, "--workers", "2", "--threads", "8", "--slots", "4", "--batch-slots", "2", "--files-dir", str(folder / "files"))


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batches")


@pytest.fixture(scope="module")
def server(tiny_llama_engine, folder: Path):
    running = start(tiny_llama_engine.directory, folder, "server.log")
    yield running
    assert running.stop() == 0, running.log()


def line(custom_id: str, model: str, content: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def submit(sdk: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    data = "".join(json.dumps(item) + "\n" for item in lines).encode()
    uploaded = sdk.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    return sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def until(sdk: openai.OpenAI, batch_id: str, done: Any, timeout: float = 45) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if done(batch):
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} is still {batch.status} ({batch.request_counts}) after {timeout} s")


def records(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(text) for text in sdk.files.content(file_id).text.splitlines()]


def test_each_line_is_what_the_endpoint_answers(server: Server, tiny_llama_engine) -> None:
    sdk = client(server)
    model = tiny_llama_engine.directory.name
    lines = [line(f"line-{i}", model, f"Question number {i}: what comes next?", 12) for i in range(6)]
    batch = submit(sdk, lines)
    assert batch.status == "in_progress" and batch.request_counts.total == 6
    done = until(sdk, batch.id, lambda b: b.status == "completed")
    assert (done.request_counts.completed, done.request_counts.failed, done.error_file_id) == (6, 0, None)
    outputs = records(sdk, done.output_file_id)
    assert sorted(r["custom_id"] for r in outputs) == [f"line-{i}" for i in range(6)]  # each once: one worker ran it
    for record in outputs:
        body = next(item["body"] for item in lines if item["custom_id"] == record["custom_id"])
        direct = sdk.chat.completions.create(**body).model_dump(exclude_unset=True)
        answered = record["response"]["body"]
        assert record["response"]["status_code"] == 200
        for key in ("id", "created"):
            answered.pop(key), direct.pop(key)
        # How much of the prompt was found in the prefix cache depends on what ran before.
        answered["usage"].pop("prompt_tokens_details"), direct["usage"].pop("prompt_tokens_details")
        assert answered == direct


def test_cancel_keeps_what_finished(server: Server, tiny_llama_engine) -> None:
    sdk = client(server)
    model = tiny_llama_engine.directory.name
    batch = submit(sdk, [line(f"c-{i}", model, f"Tell a long story, number {i}.", 400) for i in range(60)])
    until(sdk, batch.id, lambda b: b.request_counts.completed >= 1)
    assert sdk.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    cancelled = until(sdk, batch.id, lambda b: b.status == "cancelled")
    finished = cancelled.request_counts.completed
    assert 1 <= finished < 60
    assert len(records(sdk, cancelled.output_file_id)) == finished


def test_a_restart_resumes_the_batch(server: Server, tiny_llama_engine, folder: Path) -> None:
    sdk = client(server)
    model = tiny_llama_engine.directory.name
    batch = submit(sdk, [line(f"r-{i:02d}", model, f"Resume me, number {i}.", 200) for i in range(30)])
    until(sdk, batch.id, lambda b: b.request_counts.completed >= 2)
    assert server.stop() == 0, server.log()  # SIGTERM: the workers drain, the lines running stop unwritten
    again = start(tiny_llama_engine.directory, folder, "restarted.log")
    try:
        sdk = client(again)
        resumed = sdk.batches.retrieve(batch.id)
        assert resumed.status == "in_progress" and 2 <= resumed.request_counts.completed < 30
        done = until(sdk, batch.id, lambda b: b.status == "completed")
        assert (done.request_counts.completed, done.request_counts.total) == (30, 30)
        assert sorted(r["custom_id"] for r in records(sdk, done.output_file_id)) == [f"r-{i:02d}" for i in range(30)]
    finally:
        assert again.stop() == 0, again.log()
