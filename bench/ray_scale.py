"""Scale-out on Ray Serve: aggregate tokens/s at 16 streams, and the CPU spent outside replicas.

On a simulated two-node Ray cluster (ray.cluster_utils.Cluster: every node a set of
processes on this machine, one CPU each, the head none), `appliance serve --ray` runs the
decoder on the direct path (replicas answer HTTP behind HAProxy) with its replicas fixed at 1,
then 1 of two threads, then 2 (one per node, one ONNX Runtime thread each); then, on a fresh
cluster (a cluster's Serve keeps the ingress it started with), the relay path with 1 and 2. Before the clusters
start, the same load goes to the one-box server (`appliance serve`, gunicorn, ONNX Runtime on
every core) as the reference. Same client, same prompts, greedy, a fixed number of new tokens
(bench/serving.py's harness), one server at a time. CPU time of every process is read from
/proc before and after the streams, by what the process runs: what is spent outside the
replicas (router, relaying ingress, proxies, HAProxy, controller) per streamed token is the
relay's cost the direct path removes; the same CPU measured for IDLE_S seconds with no request
splits it into Ray's fixed background and the part that grows with tokens ("above idle").

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


# Ray names its worker processes after the actor they run (ray::ServeReplica:<app>:<deployment>);
# HAProxy runs as its own binary under the proxy actor.
GROUPS = (
    ("replicas", ("ServeReplica:appliance:engine",)),
    ("ingress", ("ServeReplica:appliance:ingress",)),
    ("router", ("ServeReplica:appliance:router",)),
    ("proxy", ("ProxyActor", "HAProxyManager")),
    ("haproxy", ("/haproxy ", "haproxy -f")),
    ("controller", ("ServeController",)),
)
OUTSIDE = ("ingress", "router", "proxy", "haproxy", "controller")  # Ray's serving machinery, replicas aside
IDLE_S = 10.0


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
        group = next((name for name, markers in GROUPS if any(marker in title for marker in markers)), "everything else")
        totals[group] += seconds
    return totals


def two_node_cluster():
    """Two worker nodes of one CPU each on this machine, and a head that holds none.

    Ray starts its workers at niceness 15 unless told otherwise; the replicas run at 0 here, as
    the one-box server does, so neither yields to the benchmark's client more than the other.
    """
    from ray.cluster_utils import Cluster

    os.environ["RAY_worker_niceness"] = "0"  # read by each node's raylet as it starts

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    return nodes


def measure(server: Server, args: argparse.Namespace) -> dict:
    figures: dict = {}
    with server:
        figures["single"] = single_stream(server.url, server.model, args.tokens, rounds=1)
        # What the serving machinery spends with no request at all (control loops, health checks,
        # metrics): a cost per second, not per token.
        before, started = cpu_seconds_by_group(), time.perf_counter()
        time.sleep(IDLE_S)
        after, idle_wall = cpu_seconds_by_group(), time.perf_counter() - started
        idle = {name: max(0.0, after[name] - before.get(name, 0.0)) / idle_wall for name in after}
        before, started = cpu_seconds_by_group(), time.perf_counter()
        figures["streams"] = concurrent(server.url, server.model, args.tokens, args.streams, args.per_stream)
        after, wall = cpu_seconds_by_group(), time.perf_counter() - started
        # Cores used during the 16-stream phase, by who used them (processes that ended meanwhile are not counted).
        spent = {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
        figures["cores_used"] = {name: seconds / wall for name, seconds in spent.items()}
        tokens = figures["streams"]["aggregate_tok_s"] * wall
        figures["idle_cores"] = idle
        figures["outside_ms_per_token"] = 1000 * sum(spent[name] for name in OUTSIDE) / max(tokens, 1)
        # The part that grows with tokens: what was spent beyond the idle rate over the same time.
        figures["outside_above_idle_ms_per_token"] = 1000 * sum(max(0.0, spent[name] - idle[name] * wall) for name in OUTSIDE) / max(tokens, 1)
    figures["single"].pop("texts", None)
    figures["streams"].pop("texts", None)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", type=Path, default=ROOT / "engines" / "smollm2-135m-instruct-int4")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--per-stream", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, default=PEERS / "ray_scale.json")
    parser.add_argument("--runs", default="direct_1,direct_1x2,direct_2,relay_1,relay_2", help="which Ray runs, comma-separated (the one-box server always runs)")
    args = parser.parse_args()
    model = _read_model(args.engine)
    serve = [sys.executable, "-m", "appliance", "serve", "--engines", str(args.engine), "--slots", "16"]
    results: dict[str, dict] = {}

    port = free_port()
    print("one box (gunicorn, ONNX Runtime on every core) ...", flush=True)
    results["gunicorn"] = measure(Server("ray-scale gunicorn", [*serve, "--port", str(port)], port, model), args)

    # (key, replicas, ONNX Runtime threads per replica): one thread each is a replica per node's
    # core; one replica of two threads runs on the same two cores as the one-box server.
    wanted = set(args.runs.split(","))
    for ingress, every in (("direct", (("direct_1", 1, 1), ("direct_1x2", 1, 2), ("direct_2", 2, 1))), ("relay", (("relay_1", 1, 1), ("relay_2", 2, 1)))):
        runs = [run for run in every if run[0] in wanted]
        if not runs:
            continue
        nodes = two_node_cluster()
        try:
            port = free_port()  # one port per cluster: its Serve keeps the first one's proxy
            for key, replicas, threads in runs:
                print(f"Ray Serve, {ingress} path, {replicas} replica(s) x {threads} thread(s) ...", flush=True)
                command = [*serve, "--port", str(port), "--ray", "--ray-ingress", ingress, "--ray-address", nodes.address, "--intra-op-threads", str(threads),
                           "--ray-min-replicas", str(replicas), "--ray-max-replicas", str(replicas)]
                results[key] = measure(Server(f"ray-scale {key}", command, port, model), args)
        finally:
            nodes.shutdown()

    box = results["gunicorn"]["streams"]["aggregate_tok_s"]
    print(f"\n{args.streams} streams x {args.per_stream} requests x {args.tokens} tokens, {model}")
    print(f"{'server':<36}{'agg tok/s':>10}{'x one box':>10}{'p50 TTFT ms':>13}{'p95 TTFT ms':>13}{'errors':>8}{'1-stream tok/s':>16}{'outside ms/tok':>16}{'above idle':>12}")
    labels = {
        "gunicorn": "one box, gunicorn (2 threads)", "direct_1": "Ray direct, 1 replica x 1 thread", "direct_1x2": "Ray direct, 1 replica x 2 threads",
        "direct_2": "Ray direct, 2 replicas x 1 thread", "relay_1": "Ray relay, 1 replica x 1 thread", "relay_2": "Ray relay, 2 replicas x 1 thread",
    }
    labels = {key: label for key, label in labels.items() if key in results}
    for key, label in labels.items():
        s, single = results[key]["streams"], results[key]["single"]
        print(f"{label:<36}{s['aggregate_tok_s']:>10.1f}{s['aggregate_tok_s'] / box:>10.2f}{s['ttft_p50_ms']:>13.0f}{s['ttft_p95_ms']:>13.0f}{s['errors']:>8}"
              f"{single['decode_tok_s']:>16.1f}{results[key]['outside_ms_per_token']:>16.3f}{results[key]['outside_above_idle_ms_per_token']:>12.3f}")
    print("cores used during the streams (idle before them), by process group:")
    for key in labels:
        used, idle = results[key]["cores_used"], results[key]["idle_cores"]
        print(f"  {key:<11}" + "  ".join(f"{name} {cores:.2f} ({idle[name]:.2f})" for name, cores in used.items() if cores >= 0.005))
    results["ratios"] = {f"{key}_over_gunicorn": results[key]["streams"]["aggregate_tok_s"] / box for key in labels if key != "gunicorn"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
