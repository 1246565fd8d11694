"""vLLM-style gauges on /metrics, so routers in front of many appliances can balance them.

A real server with 2 KV slots gets 4 long streams at once: /metrics must show 2 running
(the pool full) and 2 waiting while they run, and nothing running once they are done.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
import pytest

from tests.integration.server import Server, wait_for

pytestmark = pytest.mark.integration
LONG = {"max_tokens": 160, "temperature": 0, "ignore_eos": True}


def gauges(url: str, model: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        match = re.search(rf'^{re.escape(name)}{{model_name="{re.escape(model)}"}} (\S+)$', text, re.M)
        found[name] = float(match.group(1)) if match else float("nan")
    for name in ("appliance_kv_slots_in_use", "appliance_kv_slots"):
        match = re.search(rf'^{name}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
        found[name] = float(match.group(1)) if match else float("nan")
    return found


def test_routers_see_running_waiting_and_kv_use(default_engines: dict[str, Path], tmp_path: Path) -> None:
    server = Server(default_engines["int4"].parent, tmp_path / "server.log", "--slots", "2", "--threads", "16")
    model = default_engines["int4"].name
    try:
        idle = gauges(server.url, model)
        assert idle["vllm:num_requests_running"] == 0 and idle["vllm:num_requests_waiting"] == 0 and idle["appliance_kv_slots"] == 2
        errors: list[BaseException] = []

        def stream(i: int) -> None:
            try:
                body = {"model": model, "messages": [{"role": "user", "content": f"Count to a hundred, {i}."}], "stream": True, **LONG}
                with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
                    assert response.status_code == 200
                    for _ in response.iter_lines():
                        pass
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        clients = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for client in clients:
            client.start()
        seen: dict[str, float] = {}

        def full() -> bool:
            seen.update(gauges(server.url, model))
            return seen["vllm:num_requests_running"] == 2 and seen["vllm:num_requests_waiting"] == 2

        wait_for(full, 60, "2 running and 2 waiting on /metrics")
        assert seen["vllm:kv_cache_usage_perc"] == 1.0 and seen["appliance_kv_slots_in_use"] == 2
        for client in clients:
            client.join(120)
        assert not errors, errors
        wait_for(lambda: gauges(server.url, model)["vllm:num_requests_running"] == 0, 10, "nothing running once the streams end")
        done = gauges(server.url, model)
        assert done["vllm:num_requests_waiting"] == 0 and done["vllm:kv_cache_usage_perc"] == 0.0
    finally:
        server.stop()
