"""`appliance bench`: our server next to the peers, through HTTP with streaming on, in one run.

Servers, started one at a time on a loopback port (never two at once: they would share the
cores), driven by the same client on the same prompts, greedy, a fixed number of new
tokens with EOS ignored:

* ours: `appliance serve` on the engines directory (the default decoder and encoder);
* llama.cpp: its own `llama-server` with 8 parallel slots on the very GGUF file our default
  engine is exported from (built by `make bench-peers` into bench/peers/, outside git).

For each: single-stream decode tokens/s and time to first token (TTFT), then aggregate
tokens/s with p50/p95 TTFT at 1, 4, 8 and 16 concurrent streams, then embeddings per
second at batch 1 and 32 (ours), and the server's peak resident memory (VmHWM of every
process of the server, summed).

Peers without an HTTP server of their own run in this process, single stream, on the same
prompt token ids (bench/runtime_vs_peers.py's harness): onnxruntime-genai's generator,
optimum's ORTModelForCausalLM, Hugging Face transformers in PyTorch, and for embeddings
sentence-transformers. Their rows say "in-process": no HTTP cost, so the comparison
favours them.

    python bench/serving.py [--engines engines] [--json bench/peers/serving.json]

Prints one table with ratios (ours / peer) and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PEERS = ROOT / "bench" / "peers"
LLAMA_SERVER = PEERS / "llama.cpp" / "bin" / "llama-server"
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain briefly why the sky is blue during the day.",
    "List five unusual uses for a paperclip and say why each works.",
    "Describe how bread is made, step by step.",
    "What are the main differences between a comet and an asteroid?",
    "Write a polite email asking a colleague to review a document by Friday.",
    "Give three tips for learning a new language as an adult.",
    "Summarize the plot of a heist movie you invent, in one paragraph.",
)
SENTENCES = tuple(f"Sentence number {i}: the {w} jumps over the lazy dog near the river bank." for i, w in enumerate(["fox", "cat", "hare", "deer"] * 16))
CONCURRENCY = (1, 4, 8, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid] + [p for kid in kids for p in process_tree(kid)]


def peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over the server's processes."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    model: str
    process: subprocess.Popen | None = None
    log: Path = field(default_factory=lambda: PEERS / "server.log")

    def __enter__(self) -> Server:
        import httpx

        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("w")
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited while starting; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not become healthy in 10 minutes; see {self.log}")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def stream_chat(client, url: str, model: str, prompt: str, tokens: int, extra: dict | None = None) -> dict:
    """One streamed greedy chat completion: TTFT, decode rate, token count (from usage)."""
    body = {**(extra or {}),
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = None
    chunks, usage = 0, None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]
            for choice in data.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
    count = (usage or {}).get("completion_tokens") or chunks
    return {"ttft_s": first - started, "decode_s": last - first, "tokens": count, "total_s": last - started}


def single_stream(url: str, model: str, tokens: int, rounds: int) -> dict:
    import httpx

    runs = []
    with httpx.Client() as client:
        stream_chat(client, url, model, PROMPTS[0], 8)  # warm-up
        for _ in range(rounds):
            for prompt in PROMPTS[:3]:
                runs.append(stream_chat(client, url, model, prompt, tokens))
    return {
        "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs),
        "decode_tok_s": statistics.median((r["tokens"] - 1) / r["decode_s"] for r in runs),
    }


def concurrent(url: str, model: str, tokens: int, streams: int, per_stream: int) -> dict:
    """`streams` clients, each sending `per_stream` requests back to back."""
    import httpx

    results: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with httpx.Client() as client:
            for j in range(per_stream):
                try:
                    r = stream_chat(client, url, model, PROMPTS[(index + j) % len(PROMPTS)], tokens)
                except Exception as exc:  # counted and reported, not hidden
                    with lock:
                        errors.append(exc)
                    continue
                with lock:
                    results.append(r)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttfts = sorted(r["ttft_s"] for r in results)

    def pct(p: float) -> float:
        return 1000 * ttfts[min(len(ttfts) - 1, int(round(p * (len(ttfts) - 1))))] if ttfts else float("nan")

    return {
        "streams": streams,
        "requests": len(results),
        "errors": len(errors),
        "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_ms": pct(0.5),
        "ttft_p95_ms": pct(0.95),
    }


# Constrained decoding's cost: a JSON list of records that cannot end within the token budget,
# so every constrained stream decodes as many tokens as a free one, through keys, strings and numbers.
PEOPLE = {
    "type": "array",
    "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]},
    "minItems": 200,
}
CONSTRAINED = {"response_format": {"type": "json_schema", "json_schema": {"name": "people", "schema": PEOPLE}}}
STRUCTURED_PROMPT = "List people you could meet in a small town, with their names and ages, as JSON."


def streams_of(url: str, model: str, tokens: int, extras: list[dict | None]) -> dict:
    """One request per stream, all at once (stream i sends extras[i]): tok/s per kind, per-stream decode rates."""
    import httpx

    results: list[tuple[bool, dict]] = []
    lock = threading.Lock()

    def one(extra: dict | None) -> None:
        with httpx.Client() as client:
            r = stream_chat(client, url, model, STRUCTURED_PROMPT, tokens, extra)
        with lock:
            results.append((extra is not None, r))

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(e,)) for e in extras]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    figures = {}
    for kind, constrained in (("free", False), ("constrained", True)):
        rows = [r for c, r in results if c == constrained]
        if rows:
            figures[kind] = {
                "aggregate_tok_s": sum(r["tokens"] for r in rows) / wall,
                "stream_decode_tok_s": statistics.median((r["tokens"] - 1) / r["decode_s"] for r in rows),
                "tokens": sum(r["tokens"] for r in rows),
            }
    return figures


def structured_cost(url: str, model: str, tokens: int, streams: int = 8, rounds: int = 3) -> dict:
    """Paired, interleaved rounds at `streams` streams: all free, all constrained, half and half."""
    runs: dict[str, list[dict]] = {"free": [], "constrained": [], "mixed": []}
    streams_of(url, model, 8, [None, CONSTRAINED])  # warm-up: compiles the grammar once
    for _ in range(rounds):
        runs["free"].append(streams_of(url, model, tokens, [None] * streams))
        runs["constrained"].append(streams_of(url, model, tokens, [CONSTRAINED] * streams))
        runs["mixed"].append(streams_of(url, model, tokens, [None, CONSTRAINED] * (streams // 2)))

    def median(kind: str, part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in runs[kind])

    free, constrained = median("free", "free", "aggregate_tok_s"), median("constrained", "constrained", "aggregate_tok_s")
    free_alone, free_beside = median("free", "free", "stream_decode_tok_s"), median("mixed", "free", "stream_decode_tok_s")
    return {
        "streams": streams,
        "rounds": rounds,
        "free_aggregate_tok_s": free,
        "constrained_aggregate_tok_s": constrained,
        "constrained_cost": 1 - constrained / free,
        "free_stream_tok_s_alone": free_alone,
        "free_stream_tok_s_beside_constrained": free_beside,
        "constrained_stream_tok_s_beside_free": median("mixed", "constrained", "stream_decode_tok_s"),
        "runs": runs,
    }


def embeddings_http(url: str, model: str, batch: int, total: int = 64) -> float:
    import httpx

    with httpx.Client() as client:
        client.post(f"{url}/v1/embeddings", json={"model": model, "input": list(SENTENCES[:batch])}, timeout=120).raise_for_status()
        started = time.perf_counter()
        for start in range(0, total, batch):
            inputs = list(SENTENCES[start : start + batch])
            client.post(f"{url}/v1/embeddings", json={"model": model, "input": inputs}, timeout=120).raise_for_status()
        return total / (time.perf_counter() - started)


def run_server(server: Server, args, embed_model: str | None) -> dict:
    print(f"\n== {server.name}: starting", flush=True)
    with server:
        figures = {"kind": "HTTP, streaming"}
        figures["single"] = single_stream(server.url, server.model, args.tokens, args.rounds)
        print(f"   single stream: {figures['single']['decode_tok_s']:.1f} tok/s, TTFT {figures['single']['ttft_ms']:.0f} ms", flush=True)
        figures["concurrent"] = {}
        for streams in args.concurrency:
            result = concurrent(server.url, server.model, args.tokens, streams, args.per_stream)
            figures["concurrent"][str(streams)] = result
            print(f"   {streams:2d} streams: {result['aggregate_tok_s']:.1f} tok/s, TTFT p50 {result['ttft_p50_ms']:.0f} p95 {result['ttft_p95_ms']:.0f} ms, errors {result['errors']}", flush=True)
        if getattr(args, "structured", False):
            cost = structured_cost(server.url, server.model, args.tokens)
            figures["structured"] = cost
            print(
                f"   structured @{cost['streams']}: free {cost['free_aggregate_tok_s']:.1f} tok/s, constrained {cost['constrained_aggregate_tok_s']:.1f} tok/s "
                f"(cost {100 * cost['constrained_cost']:.1f}%); a free stream alone {cost['free_stream_tok_s_alone']:.1f} tok/s, "
                f"beside constrained ones {cost['free_stream_tok_s_beside_constrained']:.1f} tok/s",
                flush=True,
            )
        if embed_model:
            figures["embeddings"] = {str(b): embeddings_http(server.url, embed_model, b) for b in (1, 32)}
            print(f"   embeddings: {figures['embeddings']}", flush=True)
        figures["peak_rss_mb"] = peak_rss_mb(server.process.pid)
        print(f"   peak RSS {figures['peak_rss_mb']:.0f} MB", flush=True)
    return figures


def in_process_peers(args, prompts_ids: list[list[int]]) -> tuple[dict, dict]:
    """Single-stream figures of the peers that have no HTTP server, and why others were skipped."""
    import runtime_vs_peers as rvp

    figures, skipped = {}, {}
    hf = rvp.hf_folder(args.source)
    makers = []
    if rvp.GENAI_PYTHON.exists():
        makers.append(("onnxruntime-genai fp32", lambda: rvp.Genai(rvp.genai_build(hf), args.threads)))
        makers.append(("onnxruntime-genai int4", lambda: rvp.Genai(rvp.genai_build(hf, "int4"), args.threads)))
    else:
        skipped["onnxruntime-genai"] = "not installed: run `make bench-peers`"
    makers.append(("optimum ORTModelForCausalLM fp32", lambda: rvp.Optimum(rvp.optimum_export(hf), args.threads)))
    makers.append(("transformers PyTorch fp32", lambda: rvp.Transformers(hf, args.threads)))
    for name, make in makers:
        try:
            system = make()
        except (ImportError, SystemExit) as exc:
            skipped[name] = str(exc)[:300]
            continue
        system.run(prompts_ids[0], 8)
        runs = [system.run(ids, args.tokens) for _ in range(args.rounds) for ids in prompts_ids]
        figures[name] = {
            "kind": "in-process, single stream",
            "single": {
                "ttft_ms": 1000 * statistics.median(t for t, _, _ in runs),
                "decode_tok_s": statistics.median((args.tokens - 1) / d for _, d, _ in runs),
            },
        }
        print(f"== {name}: {figures[name]['single']['decode_tok_s']:.1f} tok/s, TTFT {figures[name]['single']['ttft_ms']:.0f} ms", flush=True)
        if hasattr(system, "close"):
            system.close()
    return figures, skipped


def sentence_transformers_rates(folder: Path) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    rates = {}
    for batch in (1, 32):
        model.encode(list(SENTENCES[:batch]), batch_size=batch)
        started = time.perf_counter()
        for start in range(0, 64, batch):
            model.encode(list(SENTENCES[start : start + batch]), batch_size=batch)
        rates[str(batch)] = 64 / (time.perf_counter() - started)
    return rates


def print_table(results: dict) -> None:
    ours = results["systems"]["ours"]
    print("\n" + "=" * 100)
    print(f"greedy, {results['tokens']} new tokens (EOS ignored), {results['threads']} threads; ratio = ours / peer (higher is better for ours)")
    header = f"{'system':36} {'single tok/s':>12} {'TTFT ms':>8}" + "".join(f" {'agg@' + str(c):>9}" for c in results["concurrency"]) + f" {'RSS MB':>7}"
    print(header)
    for name, f in results["systems"].items():
        row = f"{name:36} {f['single']['decode_tok_s']:12.1f} {f['single']['ttft_ms']:8.0f}"
        for c in results["concurrency"]:
            agg = f.get("concurrent", {}).get(str(c))
            row += f" {agg['aggregate_tok_s']:9.1f}" if agg else f" {'-':>9}"
        row += f" {f['peak_rss_mb']:7.0f}" if "peak_rss_mb" in f else f" {'-':>7}"
        print(row + f"   ({f['kind']})")
    print("\nratios ours / peer")
    for name, f in results["systems"].items():
        if name == "ours":
            continue
        parts = [f"single {ours['single']['decode_tok_s'] / f['single']['decode_tok_s']:.2f}x"]
        for c in results["concurrency"]:
            agg = f.get("concurrent", {}).get(str(c))
            if agg:
                parts.append(f"agg@{c} {ours['concurrent'][str(c)]['aggregate_tok_s'] / agg['aggregate_tok_s']:.2f}x")
        print(f"  vs {name:33} " + ", ".join(parts))
    print("\nTTFT p50 / p95 ms at each concurrency")
    for name, f in results["systems"].items():
        if "concurrent" in f:
            print(f"  {name:36} " + "  ".join(f"@{c}: {f['concurrent'][str(c)]['ttft_p50_ms']:.0f}/{f['concurrent'][str(c)]['ttft_p95_ms']:.0f}" for c in results["concurrency"]))
    structured = ours.get("structured")
    if structured:
        print(f"\nconstrained decoding at {structured['streams']} streams (ours; paired rounds, medians; JSON schema that runs the whole budget)")
        print(f"  aggregate tok/s: free {structured['free_aggregate_tok_s']:.1f}, constrained {structured['constrained_aggregate_tok_s']:.1f} -> cost {100 * structured['constrained_cost']:.1f}% (target <= 10%)")
        print(
            f"  per free stream: alone {structured['free_stream_tok_s_alone']:.1f} tok/s, beside constrained {structured['free_stream_tok_s_beside_constrained']:.1f} tok/s; "
            f"constrained beside free {structured['constrained_stream_tok_s_beside_free']:.1f} tok/s"
        )
    emb = results.get("embeddings", {})
    if emb:
        print("\nembeddings/s (all-MiniLM-L6-v2)")
        for name, rates in emb.items():
            print(f"  {name:36} batch 1: {rates['1']:.0f}   batch 32: {rates['32']:.0f}")
    for name, why in results["skipped"].items():
        print(f"  skipped {name}: {why}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, default=ROOT / "engines", help="engines directory our server serves (default: engines)")
    parser.add_argument("--decoder", default=None, help="the decoder engine's name under --engines (default: the one make serve builds)")
    parser.add_argument("--source", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="single-stream rounds over 3 prompts")
    parser.add_argument("--per-stream", type=int, default=2, help="requests each concurrent client sends")
    parser.add_argument("--concurrency", type=int, nargs="*", default=list(CONCURRENCY))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip", nargs="*", default=[], help="systems or phases to leave out: llama.cpp, in-process, embeddings, structured")
    parser.add_argument("--json", type=Path, default=PEERS / "serving.json")
    args = parser.parse_args()

    from api.registry import find_engine_dirs
    from export.pull import resolve_default
    from export.sources import resolve_source
    from runtime.manifest import TASK_EMBEDDING, read_manifest

    manifests = [read_manifest(d) for d in find_engine_dirs(args.engines)]
    decoders = [m for m in manifests if m.task != TASK_EMBEDDING]
    encoders = [m for m in manifests if m.task == TASK_EMBEDDING]
    if not decoders:
        raise SystemExit(f"no decoder engine under {args.engines}: run `make engines` first")
    decoder = next((m for m in decoders if m.name == args.decoder), decoders[0]) if args.decoder else decoders[0]
    encoder = encoders[0].name if encoders else None
    results = {"tokens": args.tokens, "threads": args.threads, "concurrency": args.concurrency, "systems": {}, "skipped": {}, "embeddings": {}}
    results["ours_engine"] = {"name": decoder.name, "precision": decoder.precision}

    port = free_port()
    ours = Server("ours", [sys.executable, "-m", "appliance", "serve", "--engines", str(args.engines), "--port", str(port)], port, decoder.name)
    args.structured = "structured" not in args.skip
    figures = run_server(ours, args, encoder if "embeddings" not in args.skip else None)
    args.structured = False  # the peers' servers are not asked for constrained output
    if "embeddings" in figures:
        results["embeddings"]["ours (HTTP)"] = figures.pop("embeddings")
    results["systems"]["ours"] = figures

    gguf = resolve_source(args.source).path
    if "llama.cpp" in args.skip:
        results["skipped"]["llama.cpp"] = "--skip"
    elif not LLAMA_SERVER.exists():
        results["skipped"]["llama.cpp"] = "llama-server not built: run `make bench-peers`"
    else:
        port = free_port()
        version = subprocess.run([str(LLAMA_SERVER), "--version"], capture_output=True, text=True).stderr.strip().splitlines()
        llama = Server(
            "llama.cpp llama-server",
            [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", "8", "-c", str(8 * 2048), "-t", str(args.threads), "--no-webui", "--no-cache-prompt"],
            port,
            gguf.name,
        )
        name = f"llama.cpp server -np 8 ({gguf.name.split('.')[-2]})"
        results["systems"][name] = run_server(llama, args, None)
        results["systems"][name]["version"] = version[0] if version else "unknown"

    if "in-process" not in args.skip:
        from runtime.engine import load_engine
        from runtime.settings import RuntimeSettings

        engine_dir = next(d for d in find_engine_dirs(args.engines) if read_manifest(d).name == decoder.name)
        engine = load_engine(engine_dir, RuntimeSettings(verify_files=False))
        # The same token ids for every in-process peer: the chat template as our server renders it.
        prompts_ids = [
            engine.tokenizer.encode(engine.chat_template.render([{"role": "user", "content": p}], add_generation_prompt=True), add_special_tokens=False).ids
            for p in PROMPTS[:3]
        ]
        del engine
        peers, skipped = in_process_peers(args, prompts_ids)
        results["systems"].update(peers)
        results["skipped"].update(skipped)
    if encoder and "embeddings" not in args.skip:
        try:
            folder = resolve_source(resolve_default("all-minilm-l6-v2").name).path
            results["embeddings"]["sentence-transformers (in-process)"] = sentence_transformers_rates(folder)
        except ImportError as exc:
            results["skipped"]["sentence-transformers"] = str(exc)
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
