"""The Files and Batch APIs on the HTTP layer, driven by the official `openai` SDK over the in-process app.

The fake engine replies with scripted pieces; these tests check the files folder and its
limits, the input checks at creation, a batch's life (lines run by `BatchRunner.run_once`,
each answered exactly as its route answers the same body), cancel, expiry, and resuming
after a worker stopped mid-way (partial files, a torn last line, the lock).
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from falcon import testing

from api.app import create_app
from api.auth import load_api_keys
from api.batches.runner import BatchRunner, exclusive
from api.batches.store import Store
from api.context import ServerContext
from api.models.registry import ModelRegistry
from api.settings import ServerSettings
from runtime.events import KEEP_ALIVE
from tests.api.fakes import FakeGenerator, fake_models

START = 1_750_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


class Server:
    """The app over fake engines with a files folder under `folder`, the SDK and a raw client on it."""

    def __init__(self, folder: Path, generator: FakeGenerator | None = None, **settings: Any) -> None:
        counter = itertools.count(1)
        self.clock = Clock()
        self.generator = generator or FakeGenerator(context_length=4096)
        server_settings = ServerSettings(**settings)
        self.files = Store(folder, server_settings.files_max_bytes, server_settings.files_total_bytes, server_settings.files_max_count, clock=self.clock)
        self.ctx = ServerContext(
            ModelRegistry.of(fake_models(self.generator)), server_settings, auth=load_api_keys(server_settings),
            clock=self.clock, new_id=lambda prefix: f"{prefix}{next(counter):04d}", files=self.files,
        )  # fmt: skip
        app = create_app(self.ctx)
        self.sdk = openai.OpenAI(base_url="http://appliance/v1", api_key="unused", http_client=httpx.Client(transport=httpx.WSGITransport(app=app)), max_retries=0)
        self.raw = testing.TestClient(app)
        self.runner = BatchRunner(self.ctx, poll_s=0.05)

    def upload(self, lines: list[Any], name: str = "input.jsonl") -> str:
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        return self.sdk.files.create(file=(name, io.BytesIO(text.encode()), "application/jsonl"), purpose="batch").id

    def batch(self, lines: list[Any], endpoint: str = "/v1/chat/completions") -> Any:
        return self.sdk.batches.create(input_file_id=self.upload(lines), endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]

    def records(self, file_id: str | None) -> dict[str, dict[str, Any]]:
        assert file_id is not None
        return {record["custom_id"]: record for record in map(json.loads, self.sdk.files.content(file_id).text.splitlines())}


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path / "files")


def chat(custom_id: str, content: str = "Hi", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {"model": "fake-chat", "messages": [{"role": "user", "content": content}], **body}}


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between two runs of the same body (its id)."""
    return {key: value for key, value in body.items() if key != "id"}


# -- files ---------------------------------------------------------------------------------


def test_files_upload_retrieve_list_content_delete(server: Server) -> None:
    content = b'{"a": 1}\n'
    uploaded = server.sdk.files.create(file=("mine.jsonl", io.BytesIO(content)), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.object == "file" and uploaded.bytes == len(content)
    assert (uploaded.filename, uploaded.purpose, uploaded.status, uploaded.created_at) == ("mine.jsonl", "batch", "processed", START)
    assert server.sdk.files.retrieve(uploaded.id) == uploaded
    assert server.sdk.files.content(uploaded.id).content == content
    others = [server.upload([{"n": i}], f"f{i}.jsonl") for i in range(3)]
    # Newest first by default; the SDK pages with `after` (the last id of a page).
    assert [f.id for f in server.sdk.files.list(limit=2)] == [*reversed(others), uploaded.id]
    first = server.sdk.files.list(limit=2)
    assert [f.id for f in first.data] == [others[2], others[1]] and first.has_more
    assert [f.id for f in server.sdk.files.list(order="asc").data] == [uploaded.id, *others]
    assert [f.id for f in server.sdk.files.list(purpose="batch_output").data] == []
    deleted = server.sdk.files.delete(uploaded.id)
    assert deleted.id == uploaded.id and deleted.deleted
    with pytest.raises(openai.NotFoundError, match="no file with id"):
        server.sdk.files.retrieve(uploaded.id)
    assert not (server.files.folder / uploaded.id).exists()


def test_files_limits_and_refusals(tmp_path: Path) -> None:
    server = Server(tmp_path / "files", files_max_bytes=100, files_total_bytes=250, files_max_count=3)
    with pytest.raises(openai.APIStatusError, match="limit of 100 bytes per file") as refused:
        server.sdk.files.create(file=("big.jsonl", io.BytesIO(b"x" * 101)), purpose="batch")
    assert refused.value.status_code == 413
    for _ in range(2):
        server.sdk.files.create(file=("ok.jsonl", io.BytesIO(b"x" * 100)), purpose="batch")
    with pytest.raises(openai.APIStatusError, match="past this server's limit of 250 bytes") as refused:
        server.sdk.files.create(file=("ok.jsonl", io.BytesIO(b"x" * 60)), purpose="batch")
    assert refused.value.status_code == 413
    server.sdk.files.create(file=("ok.jsonl", io.BytesIO(b"x" * 50)), purpose="batch")
    with pytest.raises(openai.APIStatusError, match="already stores 3 files") as refused:
        server.sdk.files.create(file=("ok.jsonl", io.BytesIO(b"x")), purpose="batch")
    assert refused.value.status_code == 413
    # A refused upload leaves nothing behind in the folder.
    assert sorted(p.name for p in server.files.folder.iterdir() if p.name.startswith(".upload-")) == []
    with pytest.raises(openai.BadRequestError, match="'purpose' must be 'batch'"):
        server.sdk.files.create(file=("f.jsonl", io.BytesIO(b"x")), purpose="fine-tune")
    answer = server.raw.simulate_post("/v1/files", json={"purpose": "batch"})
    assert answer.status_code == 400 and "multipart/form-data" in answer.json["error"]["message"]


def test_a_ray_server_refuses_uploads_and_batches(tmp_path: Path) -> None:
    server = Server(tmp_path / "files", ray=True)
    with pytest.raises(openai.BadRequestError, match="not available on a --ray server"):
        server.sdk.files.create(file=("f.jsonl", io.BytesIO(b"x")), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="not available on a --ray server"):
        server.sdk.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h")


def test_files_are_shared_by_every_worker_of_the_folder(server: Server, tmp_path: Path) -> None:
    file_id = server.upload([chat("a")])
    other = Store(tmp_path / "files")  # another worker's store on the same folder
    assert other.file(file_id).bytes == server.sdk.files.retrieve(file_id).bytes


# -- creating a batch ----------------------------------------------------------------------


def test_an_input_with_problems_fails_the_batch_naming_each_line(server: Server) -> None:
    lines = [
        chat("ok"),
        "{not json",
        {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "fake-chat"}},
        chat("ok"),
        {**chat("get"), "method": "GET"},
        {**chat("url"), "url": "/v1/completions"},
        chat("nomodel", model="nope"),
        {**chat("embed"), "body": {"model": "fake-embed", "messages": []}},
        {"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"},
    ]
    batch = server.batch(lines)
    assert batch.status == "failed" and batch.failed_at == START and batch.errors is not None
    found = [(e.line, e.code) for e in batch.errors.data or []]
    assert found == [
        (2, "invalid_json_line"), (3, "missing_required_parameter"), (4, "duplicate_custom_id"), (5, "invalid_method"),
        (6, "invalid_url"), (7, "model_not_found"), (8, "invalid_model"), (9, "missing_required_parameter"),
    ]  # fmt: skip
    assert "'nope' is not served" in (batch.errors.data or [])[5].message
    server.runner.run_once()  # nothing to run
    assert server.sdk.batches.retrieve(batch.id).status == "failed"


def test_creating_a_batch_refuses_what_cannot_run(server: Server) -> None:
    file_id = server.upload([chat("a")])
    with pytest.raises(openai.BadRequestError, match="runs batches of /v1/chat/completions, /v1/completions, /v1/embeddings only"):
        server.sdk.batches.create(input_file_id=file_id, endpoint="/v1/responses", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        server.sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="output_expires_after"):
        server.sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", output_expires_after={"anchor": "created_at", "seconds": 3600})
    with pytest.raises(openai.NotFoundError, match="no file with id 'file-missing'"):
        server.sdk.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")
    empty = server.sdk.batches.create(input_file_id=server.upload([]), endpoint="/v1/chat/completions", completion_window="24h")
    assert empty.status == "failed" and [e.code for e in empty.errors.data or []] == ["empty_file"]


# -- running -------------------------------------------------------------------------------


def test_a_chat_batch_answers_each_line_as_the_route_does(server: Server) -> None:
    lines = [chat("first", "Hello there", temperature=0), chat("second", "Bye", max_tokens=3), chat("bad", "Hm", n=1000), chat("streamed", stream=True)]
    batch = server.sdk.batches.create(input_file_id=server.upload(lines), endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"})
    assert (batch.status, batch.request_counts.total, batch.in_progress_at, batch.expires_at) == ("in_progress", 4, START, START + 86400)
    assert batch.id.startswith("batch_") and batch.metadata == {"job": "nightly"}
    server.clock.now += 5
    server.runner.run_once()
    done = server.sdk.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at == START + 5 and done.finalizing_at == START + 5
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    outputs, errors = server.records(done.output_file_id), server.records(done.error_file_id)
    assert set(outputs) == {"first", "second"} and set(errors) == {"bad", "streamed"}
    for line in lines[:2]:
        record = outputs[line["custom_id"]]
        assert record["id"].startswith("batch_req_") and record["error"] is None
        assert record["response"]["status_code"] == 200 and record["response"]["request_id"].startswith("req_")
        direct = server.raw.simulate_post("/v1/chat/completions", json=line["body"])
        assert direct.status_code == 200
        assert without_ids(record["response"]["body"]) == without_ids(direct.json)
    direct = server.raw.simulate_post("/v1/chat/completions", json=lines[2]["body"])
    assert errors["bad"]["response"] == {"status_code": 400, "request_id": errors["bad"]["response"]["request_id"], "body": direct.json}
    assert errors["streamed"]["response"]["body"]["error"]["param"] == "stream"
    # Usage sums the lines that succeeded; the result files are listed as batch_output.
    prompt = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in outputs.values())
    completion = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in outputs.values())
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (prompt, completion, prompt + completion)
    assert {f.id for f in server.sdk.files.list(purpose="batch_output")} == {done.output_file_id, done.error_file_id}
    assert server.sdk.files.retrieve(done.output_file_id or "").filename == f"{batch.id}_output.jsonl"
    # The generations ran at background priority.
    assert {r.priority for r in server.generator.requests[:2]} == {1}
    assert [b.id for b in server.sdk.batches.list()] == [batch.id]


def test_completions_and_embeddings_batches(server: Server) -> None:
    completions = server.batch([{"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"model": "fake-chat", "prompt": "Once", "max_tokens": 4}}], "/v1/completions")
    embeddings = server.batch([{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-embed", "input": ["a", "bc"]}}], "/v1/embeddings")
    server.runner.run_once()
    completion = server.sdk.batches.retrieve(completions.id)
    assert completion.status == "completed"
    body = server.records(completion.output_file_id)["c"]["response"]["body"]
    direct = server.raw.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "Once", "max_tokens": 4}).json
    assert without_ids(body) == without_ids(direct) and body["object"] == "text_completion"
    embedding = server.sdk.batches.retrieve(embeddings.id)
    body = server.records(embedding.output_file_id)["e"]["response"]["body"]
    assert body == server.raw.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "bc"]}).json
    assert embedding.usage is not None and embedding.usage.input_tokens == 3


def test_listing_batches_pages_newest_first(server: Server) -> None:
    ids = [server.batch([chat("a")]).id for _ in range(3)]
    page = server.sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == [ids[2], ids[1]] and page.has_more
    assert [b.id for b in server.sdk.batches.list(limit=2)] == list(reversed(ids))  # the SDK follows `after`


def test_cancel_before_the_lines_run(server: Server) -> None:
    batch = server.batch([chat("a"), chat("b")])
    cancelling = server.sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at == START
    server.runner.run_once()
    cancelled = server.sdk.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at == START
    assert cancelled.output_file_id is None and cancelled.error_file_id is None and server.generator.requests == []
    assert server.sdk.batches.cancel(batch.id).status == "cancelled"  # again: no change
    done = server.batch([chat("c")])
    server.runner.run_once()
    with pytest.raises(openai.BadRequestError, match="is completed; only a batch validating or in progress can be cancelled"):
        server.sdk.batches.cancel(done.id)


class GatedGenerator(FakeGenerator):
    """Each generation waits (sending keep-alives) until `gate` is set; `arrived` counts them."""

    def __init__(self) -> None:
        super().__init__(context_length=4096)
        self.gate = threading.Event()
        self.arrived = 0

    def generate(self, request, heartbeat_s=None, fitted=None):  # type: ignore[no-untyped-def]
        self.arrived += 1
        while not self.gate.wait(0.02):
            yield KEEP_ALIVE
        yield from super().generate(request, heartbeat_s, fitted)


def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_cancel_stops_the_running_lines_and_keeps_what_finished(tmp_path: Path) -> None:
    generator = GatedGenerator()
    server = Server(tmp_path / "files", generator, batch_slots=1)
    generator.gate.set()
    first = server.batch([chat("a")])
    server.runner.run_once()
    generator.gate.clear()
    batch = server.batch([chat("b"), chat("c"), chat("d")])
    server.runner.start()
    try:
        wait_for(lambda: generator.arrived == 2)  # line "b" is waiting on the gate
        server.sdk.batches.cancel(batch.id)
        wait_for(lambda: server.sdk.batches.retrieve(batch.id).status == "cancelled")
    finally:
        server.runner.stop()
    cancelled = server.sdk.batches.retrieve(batch.id)
    assert cancelled.request_counts is not None and (cancelled.request_counts.completed, cancelled.request_counts.failed) == (0, 0)
    assert cancelled.output_file_id is None and generator.arrived == 2  # "c" and "d" never started
    assert server.sdk.batches.retrieve(first.id).status == "completed"


def test_a_draining_worker_leaves_the_batch_for_the_next_start(tmp_path: Path) -> None:
    generator = GatedGenerator()
    server = Server(tmp_path / "files", generator, batch_slots=2)
    batch = server.batch([chat("a"), chat("b"), chat("c")])
    server.runner.start()
    wait_for(lambda: generator.arrived == 2)
    server.ctx.draining = True  # SIGTERM: the lines running stop unwritten
    server.runner.stop()
    stopped = server.files.batch(batch.id)  # the draining app answers 503: read the record itself
    assert stopped.status == "in_progress" and stopped.request_counts.completed == 0
    # The next start, on the same folder.
    restarted = Server(tmp_path / "files", generator)
    generator.gate.set()
    restarted.runner.run_once()
    done = restarted.sdk.batches.retrieve(batch.id)
    assert done.status == "completed" and set(restarted.records(done.output_file_id)) == {"a", "b", "c"}


def test_a_restart_resumes_from_the_lines_not_written(tmp_path: Path) -> None:
    server = Server(tmp_path / "files")
    batch = server.batch([chat(name, name) for name in "abcd"])
    # A worker wrote "a" and died mid-way through writing "b" (a torn last line).
    partial = server.files.folder / f"{batch.id}.output.partial"
    record = {"id": "batch_req_1", "custom_id": "a", "response": {"status_code": 200, "request_id": "req_1", "body": {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}}, "error": None}
    partial.write_text(json.dumps(record) + "\n" + '{"id": "batch_req_2", "custom_id": "b", "resp')
    restarted = Server(tmp_path / "files")
    # Another worker holding the batch keeps this one off it.
    with exclusive(restarted.files.folder / f"{batch.id}.lock"):
        restarted.runner.run_once()
    assert restarted.generator.requests == [] and restarted.sdk.batches.retrieve(batch.id).status == "in_progress"
    restarted.runner.run_once()
    done = restarted.sdk.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None and (done.request_counts.completed, done.request_counts.total) == (4, 4)
    outputs = restarted.records(done.output_file_id)
    assert sorted(outputs) == ["a", "b", "c", "d"] and outputs["a"] == record
    assert len(restarted.generator.requests) == 3  # b, c, d: a was not run again
    assert len(restarted.sdk.files.content(done.output_file_id or "").text.splitlines()) == 4


def test_a_batch_past_its_window_expires_its_lines_not_run(server: Server) -> None:
    batch = server.batch([chat("a"), chat("b")])
    server.clock.now += 86400
    server.runner.run_once()
    expired = server.sdk.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at == START + 86400
    assert expired.request_counts is not None and (expired.request_counts.completed, expired.request_counts.failed) == (0, 2)
    errors = server.records(expired.error_file_id)
    assert errors["a"]["response"] is None and errors["a"]["error"]["code"] == "batch_expired"


def test_a_deleted_input_fails_the_batch_with_a_reason(server: Server) -> None:
    batch = server.batch([chat("a")])
    server.sdk.files.delete(batch.input_file_id)
    server.runner.run_once()
    failed = server.sdk.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.errors is not None
    assert (failed.errors.data or [])[0].code == "input_file_missing"


def test_a_missing_batch_says_when_the_folder_ended_with_an_earlier_server(tmp_path: Path) -> None:
    from api.errors import NotFound

    kept = Store(tmp_path / "kept")
    with pytest.raises(NotFound) as error:
        kept.batch("batch_gone")
    assert "--files-dir" not in error.value.message  # a folder the operator named: nothing was lost by a restart
    own = Store(tmp_path / "own", ends_with_server=True)
    for lookup in (lambda: own.batch("batch_gone"), lambda: own.file("file-gone")):
        with pytest.raises(NotFound) as error:
            lookup()
        assert "earlier run are gone" in error.value.message and "--files-dir" in error.value.message
