"""Scale-out on Ray Serve: aggregate tokens/s at 16 streams with 1 and with 2 replicas.

On a simulated two-node Ray cluster (ray.cluster_utils.Cluster: every node a set of
processes on this machine, one CPU each, the head none), `appliance serve --ray` runs the
decoder with its replicas fixed at 1, then at 2 (one per node, one ONNX Runtime thread each).
Before the cluster starts, the same load goes to the one-box server (`appliance serve`,
gunicorn, ONNX Runtime on every core) as the reference. Same client, same prompts, greedy,
a fixed number of new tokens (bench/serving.py's harness), one server at a time.

What a 2-core machine can show: two replicas of one thread each use the same two cores as
one server of two threads; the 2-replica figure measures what Ray's routing and the second
copy of the engine cost or give on the same silicon, not what a second machine would add.

    python bench/ray_scale.py [--engine engines/smollm2-135m-instruct-int4] [--json bench/peers/ray_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serving import PEERS, Server, concurrent, free_port, single_stream  # noqa: E402


def _read_model(engine: Path) -> str:
    return json.loads((engine / "manifest.json").read_text())["name"]


# Ray names its worker processes after the actor they run (ray::ServeReplica:<app>:<deployment>).
GROUPS = (("replicas", "ServeReplica:appliance:engine-"), ("ingress", "ServeReplica:appliance:ingress"), ("proxy", "ProxyActor"))


def cpu_seconds_by_group() -> dict[str, float]:
    """CPU time (user + system) so far of every process on this machine, by what it runs."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals = {name: 0.0 for name, _ in GROUPS} | {"everything else": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        group = next((name for name, marker in GROUPS if marker in title), "everything else")
        totals[group] += seconds
    return totals


def measure(server: Server, args: argparse.Namespace) -> dict:
    figures: dict = {}
    with server:
        figures["single"] = single_stream(server.url, server.model, args.tokens, rounds=1)
        before, started = cpu_seconds_by_group(), time.perf_counter()
        figures["streams"] = concurrent(server.url, server.model, args.tokens, args.streams, args.per_stream)
        after, wall = cpu_seconds_by_group(), time.perf_counter() - started
        # Cores used during the 16-stream phase, by who used them (processes that ended meanwhile are not counted).
        figures["cores_used"] = {name: max(0.0, after[name] - before.get(name, 0.0)) / wall for name in after}
    figures["single"].pop("texts", None)
    figures["streams"].pop("texts", None)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", type=Path, default=ROOT / "engines" / "smollm2-135m-instruct-int4")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--per-stream", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, default=PEERS / "ray_scale.json")
    args = parser.parse_args()
    model = _read_model(args.engine)
    serve = [sys.executable, "-m", "appliance", "serve", "--engines", str(args.engine), "--slots", "16"]
    results: dict[str, dict] = {}

    port = free_port()
    print("one box (gunicorn, ONNX Runtime on every core) ...", flush=True)
    results["gunicorn"] = measure(Server("ray-scale gunicorn", [*serve, "--port", str(port)], port, model), args)

    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=1)
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        port = free_port()  # one port for both: the cluster's Serve keeps the first one's proxy
        for replicas in (1, 2):
            print(f"Ray Serve, {replicas} replica(s) ...", flush=True)
            command = [*serve, "--port", str(port), "--ray", "--ray-address", nodes.address, "--intra-op-threads", "1",
                       "--ray-min-replicas", str(replicas), "--ray-max-replicas", str(replicas)]
            results[f"ray_{replicas}"] = measure(Server(f"ray-scale ray {replicas}", command, port, model), args)
    finally:
        nodes.shutdown()

    one, two, box = (results[k]["streams"]["aggregate_tok_s"] for k in ("ray_1", "ray_2", "gunicorn"))
    print(f"\n{args.streams} streams x {args.per_stream} requests x {args.tokens} tokens, {model}")
    print(f"{'server':<34}{'agg tok/s':>10}{'p50 TTFT ms':>13}{'p95 TTFT ms':>13}{'errors':>8}{'1-stream tok/s':>16}")
    for key, label in (("gunicorn", "one box, gunicorn (2 threads)"), ("ray_1", "Ray, 1 replica x 1 thread"), ("ray_2", "Ray, 2 replicas x 1 thread")):
        s, single = results[key]["streams"], results[key]["single"]
        print(f"{label:<34}{s['aggregate_tok_s']:>10.1f}{s['ttft_p50_ms']:>13.0f}{s['ttft_p95_ms']:>13.0f}{s['errors']:>8}{single['decode_tok_s']:>16.1f}")
    print(f"2 replicas / 1 replica: {two / one:.2f}x; 2 replicas / one box: {two / box:.2f}x")
    print("cores used during the streams, by process group:")
    for key in ("gunicorn", "ray_1", "ray_2"):
        print(f"  {key:<10}" + "  ".join(f"{name} {cores:.2f}" for name, cores in results[key]["cores_used"].items()))
    results["ratios"] = {"ray_2_over_ray_1": two / one, "ray_2_over_gunicorn": two / box}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
