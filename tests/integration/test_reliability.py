"""Reliability on real engines and real gunicorn: disconnects, killed workers, altered engines, session errors.

Everything talks to 127.0.0.1 only and is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import falcon.testing
import httpx
import ollama
import pytest

from tests.integration.server import ROOT, Server, free_port, wait_for

pytestmark = pytest.mark.integration
DECODER = "smollm2-135m-instruct-int4"


def generators(url: str) -> dict:
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200, health.text
    return health.json()["generators"]


def open_raw_stream(port: int, body: dict, key: str | None = None) -> socket.socket:
    """A streaming request on a bare socket, read until its first SSE frame: a client we can drop."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    payload = json.dumps(body).encode()
    authorization = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"{authorization}Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the stream before its first frame"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return sock


def stream_rate(url: str, tokens: int) -> float:
    """Tokens per second after the first, of one greedy streamed completion of exactly `tokens` tokens."""
    body = {"model": DECODER, "prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    times = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter())
    return (len(times) - 2) / (times[-2] - times[0])  # the last frame only carries finish_reason


@pytest.fixture(scope="module")
def busy_server(default_engines: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The int4 default engine with the default slots (16), threads and queue."""
    running = Server(default_engines["int4"], tmp_path_factory.mktemp("busy") / "server.log")
    yield running
    running.stop()


def test_disconnected_streams_free_their_slots(busy_server: Server) -> None:
    url = busy_server.url
    baseline = stream_rate(url, 48)
    long = {"model": DECODER, "messages": [{"role": "user", "content": "Count to a thousand."}], "max_tokens": 2000, "ignore_eos": True, "stream": True}
    sockets = [open_raw_stream(busy_server.port, long) for _ in range(20)]

    def all_held():
        state = generators(url)[DECODER]
        return (state["active"], state["waiting"]) == (16, 4)  # (admission happens at the next tick)

    wait_for(all_held, 30, "16 requests generating and 4 waiting")
    for sock in sockets:
        sock.close()
    started = time.monotonic()
    wait_for(lambda: generators(url)[DECODER]["active"] + generators(url)[DECODER]["waiting"] == 0, 15, "every slot free after the disconnects")
    freed_in = time.monotonic() - started
    before = generators(url)[DECODER]
    rate = stream_rate(url, 48)
    after = generators(url)[DECODER]
    # The new request had the engine to itself: every token generated meanwhile was its own.
    assert after["tokens"] - before["tokens"] == 48 and after["steps"] - before["steps"] == 47
    assert rate > 0.5 * baseline, (rate, baseline)
    print(f"20 dropped streams freed in {freed_in:.2f} s; alone before {baseline:.0f} tok/s, after {rate:.0f} tok/s")


def test_a_queued_stream_hears_keep_alives(default_engines: dict[str, Path], tmp_path: Path) -> None:
    """One slot held by a long stream: a second streamed request gets SSE comments while it waits.

    The server requires an API key; the official clients send it as their users would.
    """
    key = "sk-appliance-reliability-0001"
    (tmp_path / "keys").write_text(f"# test key\n{key}\n")
    server = Server(default_engines["int4"], tmp_path / "server.log", "--slots", "1", "--stream-keepalive", "0.2", "--api-key-file", str(tmp_path / "keys"))
    try:
        import openai

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-not-a-key-of-this-server").models.list()
        assert [m.id for m in openai.OpenAI(base_url=f"{server.url}/v1", api_key=key).models.list()] == [DECODER]
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=server.url).list()
        assert refused.value.status_code == 401
        chat = {"model": DECODER, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        holder = open_raw_stream(server.port, {**chat, "max_tokens": 2000, "ignore_eos": True}, key)
        waiting = open_raw_stream(server.port, {**chat, "max_tokens": 4}, key)
        waiting.settimeout(30)
        received = b""
        while received.count(b": keep-alive\n\n") < 2:
            chunk = waiting.recv(65536)
            assert chunk, received
            received += chunk
        assert b'"finish_reason":"' not in received and generators(server.url)[DECODER]["waiting"] == 1
        # An Ollama client waits behind it too, hearing NDJSON keep-alives (spaces) it must read past.
        parts: list = []

        def ollama_chat() -> None:
            client = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {key}"})
            try:
                parts.extend(client.chat(model=DECODER, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}, stream=True))
            except Exception as exc:  # surfaced below
                parts.append(exc)

        reader = threading.Thread(target=ollama_chat)
        reader.start()
        wait_for(lambda: generators(server.url)[DECODER]["waiting"] == 2, 30, "the Ollama request queued")
        time.sleep(1.0)  # five keep-alive intervals
        holder.close()  # its slot frees; the waiting requests run to their end
        while b"data: [DONE]" not in received:
            chunk = waiting.recv(65536)
            assert chunk, received
            received += chunk
        waiting.close()
        reader.join(60)
        assert parts and not any(isinstance(p, Exception) for p in parts), parts
        assert parts[-1].done is True
    finally:
        server.stop()


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(tiny_llama_engine, tmp_path: Path) -> None:
    server = Server(tiny_llama_engine.directory, tmp_path / "server.log", "--workers", "2", "--slots", "2", "--threads", "8")
    try:
        master = server.process.pid
        pids = wait_for(lambda: len(worker_pids(master)) == 2 and worker_pids(master), 30, "two workers")
        name = tiny_llama_engine.manifest.name
        body = {"model": name, "prompt": "hello", "max_tokens": 4, "temperature": 0}
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        answered, replacement = 0, None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            # A new connection each time, as clients after the crash would make.
            result = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
            assert result.status_code == 200, result.text
            answered += 1
            health = httpx.get(f"{server.url}/health", timeout=30)
            assert health.status_code == 200, health.text
            current = worker_pids(master)
            if victim not in current and len(current) == 2 and health.json()["pid"] in current - pids:
                replacement = health.json()["pid"]
                break
        assert replacement is not None, f"no replacement worker answered:\n{server.log()}"
        assert answered >= 1
        assert "replacement worker: loading the engines before accepting connections" in server.log()
    finally:
        server.stop()


def test_an_altered_engine_is_refused_at_start(tiny_llama_engine, tmp_path: Path) -> None:
    copy = tmp_path / "engine"
    shutil.copytree(tiny_llama_engine.directory, copy)
    target = copy / "tokenizer.json"
    target.write_bytes(target.read_bytes().replace(b'"', b" ", 1)[:-1] + b'"')
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--engines", str(copy), "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "tokenizer.json was altered on disk" in result.stderr and "re-export" in result.stderr


def test_an_altered_engine_is_refused_by_a_worker(tiny_llama_engine, tmp_path: Path) -> None:
    """Altered after the start (a replacement worker loads it): /health and every request say why."""
    from api.app import create_app
    from api.context import ServerContext
    from api.models.loader import load_models
    from api.models.registry import ModelRegistry
    from runtime.settings import RuntimeSettings

    copy = tmp_path / "engine"
    shutil.copytree(tiny_llama_engine.directory, copy)
    onnx = next(p for p in copy.iterdir() if p.suffix == ".onnx")
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    registry = ModelRegistry()
    registry.load_in_background(lambda: load_models(copy, RuntimeSettings(), warm=False))
    registry.wait(60)
    client = falcon.testing.TestClient(create_app(ServerContext(registry)))
    health = client.simulate_get("/health")
    assert health.status_code == 503 and "IntegrityError" in health.json["reason"] and f"{onnx.name} was altered on disk" in health.json["reason"]
    result = client.simulate_get("/v1/models")
    assert result.status_code == 503 and "altered on disk" in result.json["error"]["message"]


def test_a_session_error_ends_one_request_with_an_error_event(tiny_llama_engine) -> None:
    from api.app import create_app
    from api.context import ServerContext
    from api.models.loader import load_models
    from api.models.registry import ModelRegistry
    from runtime.settings import RuntimeSettings

    (model,) = load_models(tiny_llama_engine.directory, RuntimeSettings(), slots=4, warm=False)
    generator = model.generator
    try:
        real = generator.decoder.decode
        marker, bad = 5, generator.manifest.vocab_size + 1000

        def decode(slots, tokens):  # the id outside the vocabulary makes ONNX Runtime's Gather fail
            return real(slots, [bad if int(t) == marker else t for t in tokens])

        generator.decoder.decode = decode
        client = falcon.testing.TestClient(create_app(ServerContext(ModelRegistry.of([model]))))
        name = model.name
        doomed = {"model": name, "prompt": "hello", "max_tokens": 20, "temperature": 0, "logit_bias": {str(marker): 100}, "stream": True}
        healthy = {"model": name, "prompt": "hello there", "max_tokens": 40, "temperature": 0, "ignore_eos": True, "stream": True}
        results: dict[str, falcon.testing.Result] = {}

        def send(key: str, body: dict) -> None:
            results[key] = client.simulate_post("/v1/completions", json=body)

        threads = [threading.Thread(target=send, args=(f"healthy{i}", healthy)) for i in range(2)] + [threading.Thread(target=send, args=("doomed", doomed))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        frames = [line[6:] for line in results["doomed"].text.splitlines() if line.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        error = json.loads(frames[-2])["error"]
        assert error["type"] == "server_error" and "failed" in error["message"]
        for key in ("healthy0", "healthy1"):
            chunks = [json.loads(line[6:]) for line in results[key].text.splitlines() if line.startswith("data: {")]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length", results[key].text
        # The worker goes on serving.
        again = client.simulate_post("/v1/completions", json={**healthy, "stream": False})
        assert again.status_code == 200 and again.json["usage"]["completion_tokens"] == 40
        assert generator.stats().active == 0
    finally:
        generator.close()
