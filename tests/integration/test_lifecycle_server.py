"""Ollama's model lifecycle against the real server, driven by the official `ollama` client.

The server here has its own engines folder (hard links to the default engines), because
these tests delete, copy and pull engines in it; the shared `server` fixture is untouched.
`pull` of a default model that is not built exports it for real, from the model cache the
`default_engines` fixture filled (no network).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import ollama
import pytest

from tests.conftest import cli
from tests.integration.server import Server

DECODER = "smollm2-135m-instruct-int4"
ENCODER = "all-minilm-l6-v2"


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


@pytest.fixture(scope="module")
def own_server(default_engines: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("lifecycle") / "engines"
    shutil.copytree(default_engines["int4"].parent, folder, copy_function=_link_or_copy)
    running = Server(folder, tmp_path_factory.mktemp("lifecycle-log") / "server.log", "--threads", "8", "--slots", "2")
    running.folder = folder  # type: ignore[attr-defined]
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(own_server: Server) -> ollama.Client:
    return ollama.Client(host=own_server.url, timeout=600)


def loaded(client: ollama.Client) -> dict[str, ollama.ProcessResponse.Model]:
    return {m.model or "": m for m in client.ps().models}


def tags(client: ollama.Client) -> set[str]:
    return {m.model or "" for m in client.list().models}


def test_pulling_a_served_model(client: ollama.Client) -> None:
    assert client.pull(DECODER).status == "success"
    statuses = [p.status for p in client.pull(f"{DECODER}:latest", stream=True)]
    assert statuses == ["pulling manifest", "success"]
    with pytest.raises(ollama.ResponseError) as raised:
        client.pull("llama3.2")
    assert raised.value.status_code == 404 and "smollm2-135m-instruct-fp32" in raised.value.error


def test_keep_alive_unloads_and_a_request_loads_again(client: ollama.Client) -> None:
    name = f"{DECODER}:latest"
    client.generate(model=DECODER, prompt="Hi", options={"num_predict": 2})
    assert name in loaded(client)
    forever = loaded(client)[name].expires_at
    assert forever is not None and forever.year > 2300 and loaded(client)[name].size_vram == 0

    unloaded = client.generate(model=DECODER, keep_alive=0)  # Ollama's unload call
    assert unloaded.done and unloaded.done_reason == "unload"
    assert name not in loaded(client) and name in tags(client)

    again = client.generate(model=DECODER, prompt="Name a colour.", options={"num_predict": 8, "temperature": 0}, keep_alive="1h")
    assert again.done and again.response and (again.load_duration or 0) > 100_000_000  # it had to load the engine again
    expires = loaded(client)[name].expires_at
    assert expires is not None and 3500 < (expires - datetime.now(timezone.utc)).total_seconds() <= 3600

    chat = client.chat(model=DECODER, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive="1s")
    assert chat.done and (chat.load_duration or 0) < 100_000_000  # still loaded
    deadline = time.monotonic() + 20
    while name in loaded(client) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert name not in loaded(client)
    back = client.chat(model=DECODER, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive=-1)
    assert back.done and name in loaded(client)


def test_copy_and_delete(client: ollama.Client, own_server: Server) -> None:
    folder: Path = own_server.folder  # type: ignore[attr-defined]
    assert client.copy(DECODER, "my-smollm").status == "success"
    assert "my-smollm:latest" in tags(client)
    answer = client.generate(model="my-smollm", prompt="Hi", options={"num_predict": 4, "temperature": 0})
    assert answer.done and answer.model == "my-smollm"
    assert "my-smollm:latest" in loaded(client)
    with pytest.raises(ollama.ResponseError) as exists:
        client.copy(DECODER, "my-smollm")
    assert exists.value.status_code == 400

    assert client.delete("my-smollm").status == "success"
    assert "my-smollm:latest" not in tags(client) and "my-smollm:latest" not in loaded(client)
    assert not (folder / "my-smollm").exists() and (folder / DECODER / "manifest.json").is_file()
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete("my-smollm")
    assert gone.value.status_code == 404


def test_pull_builds_a_default_model_that_is_not_built(client: ollama.Client, own_server: Server) -> None:
    folder: Path = own_server.folder  # type: ignore[attr-defined]
    cli("pull", ENCODER)  # the weights in the model cache (a no-op when default_engines pulled them)
    assert client.delete(ENCODER).status == "success"
    assert f"{ENCODER}:latest" not in tags(client) and not (folder / ENCODER).exists()

    progress = list(client.pull(ENCODER, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success", statuses
    assert "exporting the encoder with optimum (feature-extraction)" in statuses and "verifying sha256 digest" in statuses
    assert (folder / ENCODER / "manifest.json").is_file() and not [p for p in folder.iterdir() if ".partial" in p.name]
    assert f"{ENCODER}:latest" in tags(client) and f"{ENCODER}:latest" not in loaded(client)

    vectors = client.embed(model=ENCODER, input=["A cat sits on the mat."]).embeddings
    assert len(vectors) == 1 and len(vectors[0]) == 384
    assert client.pull(ENCODER).status == "success"  # served now: at once
