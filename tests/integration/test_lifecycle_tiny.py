"""Unloading real engines (the tiny llama, in seconds): the engine is freed, an in-flight generation is never cut, a request loads it again."""

from __future__ import annotations

import gc
import shutil
import threading
import weakref
from pathlib import Path

import falcon.testing
import pytest

from api.app import create_app
from api.context import ServerContext
from api.models.loader import RuntimeLoader
from api.models.registry import ModelRegistry
from api.models.residency import RequestLeases
from runtime.events import Delta, Finish
from runtime.request import GenerationRequest
from runtime.sampling import SamplingParams
from runtime.settings import RuntimeSettings


@pytest.fixture
def served(tiny_llama_engine, tmp_path: Path) -> tuple[ModelRegistry, falcon.testing.TestClient, str]:
    folder = tmp_path / "engines"
    shutil.copytree(tiny_llama_engine.directory, folder / tiny_llama_engine.directory.name)
    loader = RuntimeLoader(RuntimeSettings(), slots=2, warm=False)
    registry = ModelRegistry(loader, folder)
    registry.load_in_background(lambda: loader.load_all(folder))
    assert registry.wait(60), registry.reason
    client = falcon.testing.TestClient(create_app(ServerContext(registry)))
    return registry, client, tiny_llama_engine.manifest.name


def schedulers(name: str) -> int:
    """Scheduler threads of engines called `name` (other tests' registries may hold some)."""
    return sum(t.name == f"scheduler-{name}" for t in threading.enumerate())


def test_unloading_frees_the_engine_and_a_request_loads_it_again(served) -> None:
    registry, client, name = served
    running = schedulers(name)
    (model,) = registry.models()
    generator = weakref.ref(model.generator)
    session = weakref.ref(model.generator.engine.session)
    del model
    body = {"model": name, "prompt": "hello", "stream": False, "options": {"num_predict": 4, "temperature": 0}}
    first = client.simulate_post("/api/generate", json={**body, "keep_alive": 0})
    assert first.status_code == 200, first.text
    assert registry.models() == [] and schedulers(name) == running - 1
    gc.collect()
    assert generator() is None and session() is None  # the ONNX Runtime session and the KV pool are gone
    assert [m["name"] for m in client.simulate_get("/api/tags").json["models"]] == [f"{name}:latest"]

    again = client.simulate_post("/api/generate", json=body)
    assert again.status_code == 200 and again.json["response"] == first.json["response"]  # the same engine, loaded again
    assert again.json["load_duration"] > 10_000_000
    assert [m.name for m in registry.models()] == [name] and schedulers(name) == running


def test_an_in_flight_generation_is_never_cut_by_an_unload(served) -> None:
    registry, client, name = served
    running = schedulers(name)
    leases = RequestLeases()  # as the HTTP boundary opens for a request
    model = registry.use(name).model
    leases.detach()
    ids = tuple(model.text().tokenize("hello"))
    events = model.text().generate(GenerationRequest(ids, SamplingParams(temperature=0), max_tokens=40, ignore_eos=True))
    first = next(events)
    assert isinstance(first, Delta)
    unload = client.simulate_post("/api/generate", json={"model": name, "keep_alive": 0, "stream": False})
    assert unload.json["done_reason"] == "unload"
    assert [m.name for m in registry.models()] == [name]  # still generating for the request that holds it
    rest = list(events)
    assert isinstance(rest[-1], Finish) and rest[-1].usage.completion_tokens == 40
    leases.release()
    assert registry.models() == [] and schedulers(name) == running - 1
