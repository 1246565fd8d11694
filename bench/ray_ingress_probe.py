"""How much CPU Ray Serve spends outside a replica per streamed chunk: its default HTTP proxy
against the HAProxy ingress with direct ingress (RAY_SERVE_ENABLE_HA_PROXY=1), on a trivial
deployment that streams SSE chunks (no engine), so what is measured is the data path alone.

Each mode runs in a fresh process (Ray reads the variable at import): a local Ray with 2 CPUs,
one deployment, `--streams` concurrent clients reading `--chunks` chunks each; CPU time of
every Ray process and HAProxy is read from /proc (psutil) before and after. Prints ms of CPU per
chunk by process and the total outside the replica (issue 31's target: ≤ 0.2 ms a token).

    python bench/ray_ingress_probe.py [--streams 8] [--chunks 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def probe(streams: int, chunks: int) -> dict:
    import httpx
    import psutil
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    @serve.deployment(max_ongoing_requests=64)
    class Streamer:
        async def __call__(self, request: Request) -> StreamingResponse:
            import asyncio

            count = int(request.query_params.get("n", chunks))

            async def frames():
                for _ in range(count):
                    yield b'data: {"choices":[{"delta":{"content":"tok"}}]}\n\n'
                    await asyncio.sleep(0.002)

            return StreamingResponse(frames(), media_type="text/event-stream")

    def cpu_seconds() -> dict[str, float]:
        spent: dict[str, float] = {}
        for process in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                command = " ".join(process.info["cmdline"] or [])
                times = process.cpu_times()
            except (psutil.Error, OSError):
                continue
            if process.info["pid"] == os.getpid():
                continue
            if "haproxy" in command:
                kind = "haproxy"
            elif command.startswith("ray::"):
                kind = command.split()[0]
            elif "raylet" in command or "gcs_server" in command:
                kind = process.info["name"] or "ray"
            else:
                continue
            spent[kind] = spent.get(kind, 0.0) + times.user + times.system
        return spent

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    serve.run(Streamer.bind(), name="probe", route_prefix="/")
    url = "http://127.0.0.1:8123/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "?n=2", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    read = [0]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http, http.stream("GET", url) as response:
            count = sum(1 for line in response.iter_lines() if line.startswith("data:"))
        with lock:
            read[0] += count

    before, started = cpu_seconds(), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, after = time.perf_counter() - started, cpu_seconds()
    per_chunk = {kind: 1000 * (after[kind] - before.get(kind, 0.0)) / max(read[0], 1) for kind in after}
    outside = sum(ms for kind, ms in per_chunk.items() if "ServeReplica" not in kind)
    serve.shutdown()
    ray.shutdown()
    return {"chunks": read[0], "wall_s": wall, "ms_per_chunk": per_chunk, "outside_replica_ms_per_chunk": outside}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--one", choices=("default", "haproxy"), help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(probe(args.streams, args.chunks)))
        return 0
    for mode in ("default", "haproxy"):
        env = {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "1" if mode == "haproxy" else "0"}
        command = [sys.executable, __file__, "--one", mode, "--streams", str(args.streams), "--chunks", str(args.chunks)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"{mode}: failed ({done.returncode}): {done.stderr[-1500:]}")
            continue
        result = json.loads(lines[-1])
        parts = ", ".join(f"{kind} {ms:.3f}" for kind, ms in sorted(result["ms_per_chunk"].items(), key=lambda item: -item[1]) if ms >= 0.001)
        print(f"{mode:8} {result['chunks']} chunks in {result['wall_s']:.2f} s; ms of CPU per chunk outside the replica {result['outside_replica_ms_per_chunk']:.3f} ({parts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
