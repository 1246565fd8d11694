"""`appliance serve --ray --ray-ingress relay`: the path kept for what the direct one cannot do.

A deployment per engine behind an ingress deployment that relays every chunk through Ray: a
stream cut by a dead replica still ends with an error event in its own dialect. On a simulated
two-node cluster of its own (a cluster's Serve keeps the ingress it started with), one replica;
bounded in time, traffic to 127.0.0.1 only. The direct path's tests are in test_ray_serve.py.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.server import Server, wait_for
from tests.integration.test_ray_serve import chat, cluster, replica_of  # noqa: F401  (cluster: the fixture, one per module)

ray = pytest.importorskip("ray", reason="the Ray path is an extra: pip install -e '.[ray]' (make install does)")
from ray import serve  # noqa: E402


@pytest.fixture(scope="module")
def relay_server(cluster, tiny_llama_engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    server = Server(
        tiny_llama_engine.directory, tmp_path_factory.mktemp("ray-relay") / "server.log",
        "--ray", "--ray-ingress", "relay", "--ray-address", cluster.address, "--slots", "2", "--queue-limit", "2",
        "--intra-op-threads", "1", startup_timeout=240,
    )
    try:
        yield server
    finally:
        assert server.stop(grace=60) == 0, server.log()


def engine_replicas(model: str) -> dict[str, int]:
    status = serve.status().applications["appliance"].deployments["engine-" + model]
    return {str(state): count for state, count in status.replica_states.items()}


def test_the_relay_streams_through_its_ingress_deployment(relay_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    assert set(serve.status().applications["appliance"].deployments) == {"ingress", "engine-" + name}
    client = openai.OpenAI(base_url=f"{relay_server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(model=name, messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=name, messages=messages, max_tokens=16, temperature=0, stream=True))
    assert len(chunks) > 3 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [m.id for m in client.models.list()] == [name]
    health = httpx.get(f"{relay_server.url}/health", timeout=30).json()
    assert health["models"] == [name] and len(health["replicas"]) == 1


def test_a_killed_replica_ends_its_stream_with_an_error_event(relay_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    body = {"model": name, "messages": [{"role": "user", "content": "A long story, please."}], "max_tokens": 1500, "ignore_eos": True, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{relay_server.url}/v1/chat/completions", json=body, timeout=60) as answer:
        assert answer.status_code == 200
        _, _, pid = replica_of(answer)
        frames = answer.iter_lines()
        assert "chat.completion.chunk" in next(line for line in frames if line.startswith("data: "))
        os.kill(pid, signal.SIGKILL)
        rest = [line for line in frames if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and "error" in json.loads(rest[-2].removeprefix("data: ")), rest[-3:]
    # Requests sent while the replica is replaced wait in Ray's queue or are sent again: none is lost.
    for turn in range(4):
        assert chat(relay_server, [{"role": "user", "content": f"after the kill {turn}"}]).status_code == 200
    wait_for(lambda: engine_replicas(name) == {"RUNNING": 1}, 60, f"the replica replaced ({engine_replicas(name)})")
