"""`appliance serve --ray` (the direct path: replicas answer HTTP behind HAProxy) on a simulated
two-node Ray cluster (every node on 127.0.0.1), serving a tiny chat engine and a tiny embedder
with API keys. The relay path's tests are in test_ray_relay.py.

One cluster and one server for the module; the tests run in order, each from the state the
previous one left: one replica at start, a second added under load on the other node,
conversations kept on their replica, a replica killed mid-stream, and back to one replica
when the load is gone. Each phase is bounded in time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.integration.server import Server, wait_for

ray = pytest.importorskip("ray", reason="the Ray path is an extra: pip install -e '.[ray]' (make install does)")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

DEPLOYMENT = "engines"  # the direct path's replicas, each serving every engine
KEY = "ray-test-key-0123456789"  # each replica checks API keys itself: the headers must reach it through HAProxy
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # The head holds no CPU: replicas (one CPU each) must go to the two worker nodes.
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, namespace="appliance", log_to_driver=False)
    try:
        yield nodes
    finally:
        serve.context._set_global_client(None)  # this process's handle on the cluster's Serve, which goes with it
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def tiny_encoder_engine(tiny_encoder_dir, tmp_path_factory: pytest.TempPathFactory):
    from export.options import ExportOptions
    from export.pipeline import export_model

    return export_model(str(tiny_encoder_dir), tmp_path_factory.mktemp("ray-encoder") / "tiny-encoder", ExportOptions())


@pytest.fixture(scope="module")
def ray_server(cluster: Cluster, tiny_llama_engine, tiny_encoder_engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Two engines, a chat model and an embedder: every replica serves both.
    engines = tmp_path_factory.mktemp("ray-engines")
    keys = tmp_path_factory.mktemp("ray-keys") / "keys.txt"
    keys.write_text(KEY + "\n")
    for engine in (tiny_llama_engine, tiny_encoder_engine):
        (engines / engine.directory.name).symlink_to(engine.directory)
    server = Server(
        engines, tmp_path_factory.mktemp("ray") / "server.log",
        "--ray", "--ray-address", cluster.address, "--slots", "2", "--queue-limit", "2",
        "--ray-min-replicas", "1", "--ray-max-replicas", "2", "--ray-target-ongoing", "1",
        "--ray-upscale-delay", "1", "--ray-downscale-delay", "30", "--intra-op-threads", "1", "--max-body-bytes", "100000",
        "--api-key-file", str(keys),
        startup_timeout=240,
    )
    try:
        yield server
    finally:
        assert server.stop(grace=60) == 0, server.log()


def replica_counts(model: str) -> dict[str, int]:
    """The replicas by state (every replica serves `model` and any other engine)."""
    status = serve.status().applications["appliance"].deployments[DEPLOYMENT]
    return {str(state): count for state, count in status.replica_states.items()}


def running(model: str) -> int:
    return replica_counts(model).get("RUNNING", 0)


def haproxy_running() -> bool:
    for command in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"haproxy" in command.read_bytes():
                return True
        except OSError:  # the process ended meanwhile
            continue
    return False


def replica_of(response: httpx.Response) -> tuple[str, str, int]:
    replica, node, pid = response.headers["x-appliance-replica"].split()
    return replica, node, int(pid)


def chat(server: Server, messages: list[dict], max_tokens: int = 8) -> httpx.Response:
    body = {"model": "tiny-llama-fp32", "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer


def test_the_official_clients_stream_through_the_ingress(ray_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    assert running(name) == 1
    client = openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0, stream=True))
    assert len(chunks) > 3  # token by token, not one buffered body
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    lines = list(ollama.Client(host=ray_server.url, headers=AUTH, timeout=60).chat(model=name, messages=messages, stream=True, options={"num_predict": 24, "temperature": 0, "repeat_penalty": 1.0}))
    assert lines[-1]["done"] and len(lines) > 3
    assert "".join(line["message"]["content"] for line in lines) == whole.choices[0].message.content
    # No Ray hop carried those chunks: the replicas answer HTTP behind HAProxy, and the only other
    # deployment is the router HAProxy asks for each POST (no relaying ingress).
    assert set(serve.status().applications["appliance"].deployments) == {DEPLOYMENT, "router"}
    assert haproxy_running()
    # The same errors as gunicorn's server, in each dialect; keys checked by the replica itself.
    refused = httpx.post(f"{ray_server.url}/v1/chat/completions", json={"model": name, "messages": messages}, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["message"].startswith("no API key given"), refused.text
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="no-such-model", messages=messages)
    with pytest.raises(ollama.ResponseError, match="not found"):
        ollama.Client(host=ray_server.url, headers=AUTH).chat(model="no-such-model", messages=messages)


def test_every_engine_is_routed_by_the_body_model_and_listed(ray_server: Server, tiny_llama_engine, tiny_encoder_engine) -> None:
    chat_model, embedder = tiny_llama_engine.manifest.name, tiny_encoder_engine.manifest.name
    client = openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    assert sorted(m.id for m in client.models.list()) == sorted([chat_model, embedder])
    assert sorted(m.model for m in ollama.Client(host=ray_server.url, headers=AUTH, timeout=60).list().models) == sorted([f"{chat_model}:latest", f"{embedder}:latest"])
    vectors = client.embeddings.create(model=embedder, input=["one sentence", "another one"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
    assert ollama.Client(host=ray_server.url, headers=AUTH, timeout=60).embed(model=embedder, input="hello").embeddings
    assert client.completions.create(model=chat_model, prompt="Hi", max_tokens=4, temperature=0).usage.completion_tokens > 0
    health = httpx.get(f"{ray_server.url}/health", headers=AUTH, timeout=30).json()
    assert health["status"] == "ok" and sorted(health["models"]) == sorted([chat_model, embedder])
    assert health["replica"].split()[0] == health["replicas"][0]["replica"].split()[0]


def scheduler_totals(server: Server, figure: str) -> int:
    health = httpx.get(f"{server.url}/health", headers=AUTH, timeout=30).json()
    return sum(stats[figure] for replica in health["replicas"] for stats in replica["generators"].values())


def active_sequences(server: Server) -> int:
    return scheduler_totals(server, "active") + scheduler_totals(server, "waiting")


def test_a_client_that_leaves_frees_its_slot_and_limits_hold(ray_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    body = {"model": name, "prompt": "A very long story:", "max_tokens": 1900, "ignore_eos": True, "temperature": 0, "stream": True}
    tokens_before = scheduler_totals(ray_server, "tokens")
    with httpx.stream("POST", f"{ray_server.url}/v1/completions", json=body, headers=AUTH, timeout=60) as answer:
        lines = answer.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert active_sequences(ray_server) == 1
    # The connection is closed mid-stream: the ingress cancels the replica's answer, which ends the generation.
    wait_for(lambda: active_sequences(ray_server) == 0, 20, "the generation ended after its client left")
    made = scheduler_totals(ray_server, "tokens") - tokens_before
    assert made < 1000, f"{made} of 1900 tokens made for a client that left after the first"
    too_big = httpx.post(f"{ray_server.url}/v1/completions", json={"model": name, "prompt": "x" * 200_000}, headers=AUTH, timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert httpx.post(f"{ray_server.url}/api/chat", content=b"{" + b" " * 200_000, headers=AUTH, timeout=30).json()["error"].startswith("the request body has")
    # Engines are each replica's, read-only: a served model pulls at once, a delete is refused in words.
    assert ollama.Client(host=ray_server.url, headers=AUTH).pull(name).status == "success"
    refused = httpx.request("DELETE", f"{ray_server.url}/api/delete", json={"model": name}, headers=AUTH, timeout=30)
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]


def _load(server: Server, name: str, stop: threading.Event, seen: set[tuple[str, str, int]]) -> None:
    """Streams of distinct prompts, one after another, until `stop`."""
    n = 0
    while not stop.is_set():
        n += 1
        body = {"model": name, "prompt": f"load {threading.get_ident()} {n}", "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=60) as answer:
            if answer.status_code == 200:
                seen.add(replica_of(answer))
            for _ in answer.iter_bytes():
                pass


def test_autoscaling_adds_a_replica_on_the_other_node_under_load(ray_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    stop, seen = threading.Event(), set()
    threads = [threading.Thread(target=_load, args=(ray_server, name, stop, seen), daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: running(name) == 2, 120, f"a second replica under load ({replica_counts(name)})")
        wait_for(lambda: len({replica for replica, _, _ in seen}) == 2, 60, "both replicas answering")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    nodes = {node for _, node, _ in seen}
    assert len(nodes) == 2, f"both replicas on one node: {seen}"


def test_every_replica_full_and_the_queue_full_is_a_429(ray_server: Server, tiny_llama_engine) -> None:
    # Two replicas of two slots, and two more requests queued on each: twelve streams at once overflow it.
    body = {"model": tiny_llama_engine.manifest.name, "prompt": "flood", "max_tokens": 300, "temperature": 0, "stream": True}
    statuses: list[int] = []
    refusals: list[httpx.Response] = []

    def one() -> None:
        with httpx.stream("POST", f"{ray_server.url}/v1/completions", json=body, headers=AUTH, timeout=60) as answer:
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                answer.read()
                refusals.append(answer)
            for _ in answer.iter_bytes():
                pass

    threads = [threading.Thread(target=one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert statuses.count(200) >= 4 and refusals, statuses
    refusal = refusals[0]
    # Refused by the replica's own scheduler, as the one-box server refuses (Ray holds nothing back).
    assert refusal.headers["retry-after"] == "1" and refusal.json()["error"]["code"] == "server_busy", refusal.text
    assert "is busy" in refusal.json()["error"]["message"]


def test_a_conversation_stays_on_its_replica(ray_server: Server, tiny_llama_engine) -> None:
    assert running(tiny_llama_engine.manifest.name) == 2
    homes: dict[int, set[str]] = {}
    # Conversations until both replicas hold some (keys fall on replicas as their ids hash), at least six.
    for conversation in range(24):
        if conversation >= 6 and len(set.union(*homes.values())) == 2:
            break
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"Conversation {conversation}: hello."}]
        for _ in range(3):
            answer = chat(ray_server, messages)
            homes.setdefault(conversation, set()).add(replica_of(answer)[0])
            messages += [{"role": "assistant", "content": answer.json()["choices"][0]["message"]["content"]}, {"role": "user", "content": "And then?"}]
    assert all(len(replicas) == 1 for replicas in homes.values()), homes
    # Later turns found their history in that replica's prefix cache.
    assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert len(set.union(*homes.values())) == 2, f"24 conversations all on one replica: {homes}"


def test_the_official_clients_stream_a_conversation_through_two_replicas(ray_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    client = openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    chat_client = ollama.Client(host=ray_server.url, headers=AUTH, timeout=60)
    served_by: dict[int, set[str]] = {}
    for conversation in range(24):  # until both replicas have streamed some
        if conversation >= 2 and len(set.union(*served_by.values())) == 2:
            break
        messages = [{"role": "user", "content": f"Conversation {conversation}, streamed."}]
        for _ in range(2):
            with client.chat.completions.with_streaming_response.create(model=name, messages=messages, max_tokens=8, temperature=0, stream=True) as raw:
                served_by.setdefault(conversation, set()).add(raw.headers["x-appliance-replica"].split()[0])
                text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
            lines = list(chat_client.chat(model=name, messages=messages, stream=True, options={"num_predict": 8, "temperature": 0, "repeat_penalty": 1.0}))
            assert lines[-1]["done"] and "".join(line["message"]["content"] for line in lines) == text  # greedy without Ollama's default repeat penalty: the same tokens
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "More."}]
    assert all(len(replicas) == 1 for replicas in served_by.values()), served_by
    assert len(set.union(*served_by.values())) == 2, served_by


def test_a_stored_response_is_continued_on_any_replica(ray_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    client = openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    first = client.responses.create(model=name, input="My name is Ada.", max_output_tokens=6, temperature=0)
    answered_by = set()
    for turn in range(24):  # different inputs, different keys: until both replicas have continued it
        raw = client.responses.with_raw_response.create(model=name, input=f"Question {turn}: my name?", previous_response_id=first.id, max_output_tokens=4, temperature=0)
        answered_by.add(raw.headers["x-appliance-replica"].split()[0])
        assert raw.parse().usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        if len(answered_by) == 2:
            break
    assert len(answered_by) == 2, answered_by  # by chance, 24 keys all on one replica: 1 in 8 million
    assert client.responses.retrieve(first.id).output_text == first.output_text


def test_a_killed_replica_cuts_its_streams_and_loses_no_later_request(ray_server: Server, tiny_llama_engine) -> None:
    # On the direct path the replica writes the client's bytes itself: when it dies mid-stream,
    # HAProxy ends the connection short of the stream's last chunk, which every HTTP client reports
    # as an error (here the openai client's httpx). No truncated answer passes for a whole one. The
    # relay path (test_ray_relay.py) ends such a stream with an error event instead.
    name = tiny_llama_engine.manifest.name
    client = openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "A long story, please."}]
    with client.chat.completions.with_streaming_response.create(
        model=name, messages=messages, max_tokens=1500, temperature=0, stream=True, extra_body={"ignore_eos": True},
    ) as raw:
        _, _, pid = raw.headers["x-appliance-replica"].split()
        chunks = iter(raw.parse())
        assert next(chunks).object == "chat.completion.chunk"
        os.kill(int(pid), signal.SIGKILL)
        with pytest.raises(Exception, match="incomplete chunked read") as cut:  # the openai client's own httpx fork
            for _ in chunks:
                pass
        assert type(cut.value).__name__ == "RemoteProtocolError"
    # Every request sent after the kill is answered: the router passes over the replica that
    # does not answer its probe, and HAProxy resends a request whose connection was refused.
    for turn in range(8):
        assert chat(ray_server, [{"role": "user", "content": f"after the kill {turn}"}]).status_code == 200
    wait_for(lambda: running(name) >= 1 and replica_counts(name).keys() <= {"RUNNING"}, 60, f"the replica replaced ({replica_counts(name)})")


def test_autoscaling_removes_the_replica_once_the_load_is_gone(ray_server: Server, tiny_llama_engine) -> None:
    name = tiny_llama_engine.manifest.name
    wait_for(lambda: running(name) == 1 and replica_counts(name).keys() == {"RUNNING"}, 90, f"back to one replica ({replica_counts(name)})")
    assert chat(ray_server, [{"role": "user", "content": "still there?"}]).status_code == 200


def test_the_server_stops_cleanly(ray_server: Server) -> None:
    assert httpx.get(f"{ray_server.url}/health", headers=AUTH, timeout=30).json()["status"] == "ok"
