"""Interactive time to first token with and without a batch running (the Batch API's priority).

Starts `appliance serve` on a free loopback port with the given engine and a private files
folder, then measures streaming chat requests sent one at a time at random intervals (time
from sending to the first text delta):

1. without a batch;
2. while a batch of `--lines` chat requests (default 500, greedy, `--batch-tokens` each) runs
   in the server's background (POST /v1/files, POST /v1/batches; measured once its first line
   is done); the batch is cancelled afterwards;
3. without a batch again: 1 and 3 together are the baseline, so drift from other load on the
   machine falls on both sides.

It prints p50 and p90 of each and the ratio with/without (the target: within 1.2), and how
many batch lines finished while the interactive requests ran.

    python bench/batch_priority.py engines/smollm2-135m-instruct-int4 [--requests 30 --lines 500] [--serve-args '--batch-slots 2']
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]

TOPICS = ("lighthouses", "bees", "volcanoes", "chess", "bread", "comets", "rivers", "violins", "glaciers", "owls", "trains", "tea")


def start_server(engine: Path, files: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "appliance", "serve", "--engines", str(engine), "--port", str(port), "--files-dir", str(files), *extra]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not become healthy within 300 s")


def first_token_s(http: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> float:
    """Seconds from sending a streaming chat request to its first text delta (the rest is read too)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = None
    with http.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream carried no text")
    return first


def interactive(http: httpx.Client, url: str, model: str, count: int, max_tokens: int, rng: random.Random, offset: int) -> list[float]:
    times = []
    for i in range(count):
        topic = TOPICS[(offset + i) % len(TOPICS)]
        times.append(first_token_s(http, url, model, f"In two sentences, what is interesting about {topic}? (question {offset + i})", max_tokens))
        time.sleep(rng.uniform(0.1, 0.4))  # arrivals at random points of the scheduler's ticks
    return times


def batch_input(model: str, lines: int, max_tokens: int) -> bytes:
    rows = []
    for i in range(lines):
        body = {"model": model, "messages": [{"role": "user", "content": f"Write a short note about {TOPICS[i % len(TOPICS)]}, number {i}."}], "max_tokens": max_tokens, "temperature": 0}
        rows.append(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(rows) + "\n").encode()


def percentiles(times: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(times, n=10)
    return {"p50_ms": statistics.median(times) * 1000, "p90_ms": cuts[8] * 1000, "n": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", type=Path)
    parser.add_argument("--requests", type=int, default=30, help="interactive requests per phase")
    parser.add_argument("--tokens", type=int, default=16, help="tokens each interactive request generates")
    parser.add_argument("--lines", type=int, default=500, help="requests in the batch")
    parser.add_argument("--batch-tokens", type=int, default=64, help="tokens each batch line generates at most")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve-args", default="", help="extra `appliance serve` arguments, e.g. '--batch-slots 2'")
    args = parser.parse_args()
    model = json.loads((args.engine / "manifest.json").read_text()).get("name") or args.engine.name
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as folder:
        process, url = start_server(args.engine, Path(folder), shlex.split(args.serve_args))
        try:
            result = run(url, model, args)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run(url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    with httpx.Client() as http:
        interactive(http, url, model, 3, args.tokens, rng, 1000)  # warm: the first requests at each batch size pay more
        before = interactive(http, url, model, args.requests, args.tokens, rng, 0)
        uploaded = http.post(f"{url}/v1/files", files={"file": ("batch.jsonl", io.BytesIO(batch_input(model, args.lines, args.batch_tokens)))}, data={"purpose": "batch"}).json()
        batch = http.post(f"{url}/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()
        assert batch["status"] == "in_progress", batch
        started = time.monotonic()
        while http.get(f"{url}/v1/batches/{batch['id']}").json()["request_counts"]["completed"] < 1:
            if time.monotonic() - started > 120:
                raise SystemExit("the batch did not start within 120 s")
            time.sleep(0.2)
        at_start = http.get(f"{url}/v1/batches/{batch['id']}").json()["request_counts"]["completed"]
        measured_from = time.monotonic()
        during = interactive(http, url, model, args.requests, args.tokens, rng, args.requests)
        state = http.get(f"{url}/v1/batches/{batch['id']}").json()
        elapsed = time.monotonic() - measured_from
        http.post(f"{url}/v1/batches/{batch['id']}/cancel")
        while http.get(f"{url}/v1/batches/{batch['id']}").json()["status"] not in ("cancelled", "completed"):
            time.sleep(0.2)
        after = interactive(http, url, model, args.requests, args.tokens, rng, 2 * args.requests)
    without, with_batch = percentiles(before + after), percentiles(during)
    lines_done = state["request_counts"]["completed"] - at_start
    result = {
        "without_batch": without,
        "with_batch": with_batch,
        "ratio_p50": with_batch["p50_ms"] / without["p50_ms"],
        "ratio_p90": with_batch["p90_ms"] / without["p90_ms"],
        "batch_lines_done_while_measuring": lines_done,
        "batch_lines_per_s": lines_done / elapsed,
        "batch_status_when_measured": state["status"],
    }
    print(f"interactive TTFT without a batch: p50 {without['p50_ms']:.1f} ms, p90 {without['p90_ms']:.1f} ms ({without['n']} requests)")
    print(f"interactive TTFT with a {args.lines}-line batch running: p50 {with_batch['p50_ms']:.1f} ms, p90 {with_batch['p90_ms']:.1f} ms ({with_batch['n']} requests)")
    print(f"ratio with/without: p50 {result['ratio_p50']:.2f}, p90 {result['ratio_p90']:.2f} (target: within 1.20)")
    print(f"batch lines finished meanwhile: {lines_done} in {elapsed:.1f} s ({result['batch_lines_per_s']:.2f} lines/s)")
    return result


if __name__ == "__main__":
    sys.exit(main())
