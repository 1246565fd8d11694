"""`appliance bench`: our server next to the peers, through HTTP with streaming on, in one run.

Servers, started one at a time on a loopback port (never two at once: they would share the
cores), driven by the same client on the same prompts, greedy, a fixed number of new
tokens with EOS ignored:

* ours: `appliance serve` on the engines directory (the default decoder and encoder);
* llama.cpp: its own `llama-server` with 8 parallel slots on the very GGUF file our default
  engine is exported from (built by `make bench-peers` into bench/peers/, outside git).

Both run with their defaults for prompt caching (on). For each: single-stream decode
tokens/s and time to first token (TTFT), then aggregate tokens/s with p50/p95 TTFT at 1, 4,
8 and 16 concurrent streams, a five-turn chat whose history grows to ~1,500 tokens (each
later turn's TTFT against a cold prefill of the same conversation), embeddings per second at
batch 1 and 32 and with 16 concurrent clients sending a sentence each (ours), and the
server's peak resident memory (VmHWM of every process of the server, summed, over the whole
run: the 16-stream burst included), and our server without and with `--speculate ngram` on
copying and free prompts, a lone stream (bench/speculation.py). Each server writes its
own log under bench/peers/logs/. A server that dies or fails mid-run is reported with its
error and the figures it got so far; the run goes on with the next one.

At the end every target of the throughput issue is printed with its ratio and PASS or MISS,
and kept in the JSON under "targets". Peak memory is given twice: up to the end of the
concurrent phases (the 16-stream burst, the issue's figure) and over the whole run (the long
multi-turn conversations and the prefix cache they leave add to it).

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
    log: Path = field(default=PEERS / "logs" / "server.log")

    def __post_init__(self) -> None:
        slug = "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")
        self.log = PEERS / "logs" / f"{slug}.log"

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


def http_client():
    """An HTTP client that opens a connection per request, for every server alike: llama-server
    closes a kept-alive connection after a stream, and the next request sent on it failed
    ("Server disconnected without sending a response") before reaching the server."""
    import httpx

    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def sse_chunks(client, url: str, body: dict):
    """The JSON chunks of one streamed chat completion, as they arrive."""
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


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
    chunks, usage, parts = 0, None, []
    for data in sse_chunks(client, url, body):
        if data.get("usage"):
            usage = data["usage"]
        for choice in data.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
                parts.append(text)
    if first is None or last is None:
        raise RuntimeError(f"the stream for {prompt[:40]!r} ended without any text")
    count = (usage or {}).get("completion_tokens") or chunks
    return {"ttft_s": first - started, "decode_s": last - first, "tokens": count, "total_s": last - started, "prompt": prompt, "text": "".join(parts)}


def single_stream(url: str, model: str, tokens: int, rounds: int) -> dict:

    runs = []
    with http_client() as client:
        stream_chat(client, url, model, PROMPTS[0], 8)  # warm-up
        for _ in range(rounds):
            for prompt in PROMPTS[:3]:
                runs.append(stream_chat(client, url, model, prompt, tokens))
    return {
        "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs),
        "decode_tok_s": statistics.median((r["tokens"] - 1) / r["decode_s"] for r in runs),
        "texts": {r["prompt"]: r["text"] for r in runs},
    }


def concurrent(url: str, model: str, tokens: int, streams: int, per_stream: int) -> dict:
    """`streams` clients, each sending `per_stream` requests back to back."""

    results: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with http_client() as client:
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
        "error_examples": sorted({f"{type(e).__name__}: {e}"[:200] for e in errors})[:3],
        "texts": [(r["prompt"], r["text"]) for r in results],
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

    results: list[tuple[bool, dict]] = []
    lock = threading.Lock()

    def one(extra: dict | None) -> None:
        with http_client() as client:
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

    with http_client() as client:
        client.post(f"{url}/v1/embeddings", json={"model": model, "input": list(SENTENCES[:batch])}, timeout=120).raise_for_status()
        started = time.perf_counter()
        for start in range(0, total, batch):
            inputs = list(SENTENCES[start : start + batch])
            client.post(f"{url}/v1/embeddings", json={"model": model, "input": inputs}, timeout=120).raise_for_status()
        return total / (time.perf_counter() - started)


def embeddings_clients(url: str, model: str, clients: int = 16, total: int = 128) -> float:
    """Sentences/s with `clients` concurrent clients, each sending one sentence per request:
    what the server's batching of concurrent requests into shared encoder runs buys."""
    import httpx

    failures: list[BaseException] = []

    def client_loop(index: int) -> None:
        try:
            with http_client() as client:
                for n in range(index, total, clients):
                    client.post(f"{url}/v1/embeddings", json={"model": model, "input": SENTENCES[n % len(SENTENCES)]}, timeout=120).raise_for_status()
        except BaseException as exc:  # reported after the others finish: a failed client makes the figure wrong
            failures.append(exc)

    with httpx.Client() as warm:
        warm.post(f"{url}/v1/embeddings", json={"model": model, "input": SENTENCES[0]}, timeout=120).raise_for_status()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} of {clients} embedding clients failed: {failures[0]!r}")
    return total / (time.perf_counter() - started)


# A five-turn chat: each question is long enough, and each answer is fed back, so that the
# history reaches ~1,500 tokens by the last turn.
TOPICS = ("rivers", "mountains", "deserts", "forests", "islands")
MULTI_TURN_ANSWER = 240


def _question(turn: int) -> str:
    topic = TOPICS[turn % len(TOPICS)]
    return (
        f"Question {turn + 1}. We are writing a travel guide together. Now describe the {topic} a visitor should see, "
        f"with their history, the best season to go, what to pack, how to get there, where to stay, what it costs, "
        f"and one thing most guides forget to mention about the {topic}. Keep the style of the earlier sections."
    )


def chat_ttft(client, url: str, model: str, messages: list[dict], tokens: int) -> tuple[float, str, int]:
    """TTFT of one streamed chat, the answer's text, and the cached prompt tokens the server reported (-1: none)."""
    body = {
        "model": model, "messages": messages, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, parts, cached = None, [], -1
    for data in sse_chunks(client, url, body):
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        if "cached_tokens" in details:
            cached = details["cached_tokens"]
        for choice in data.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                first = first or time.perf_counter()
                parts.append(text)
    return (first or time.perf_counter()) - started, "".join(parts), cached


def multi_turn(url: str, model: str, turns: int = 5, rounds: int = 2) -> dict:
    """Later turns' TTFT against a cold prefill of the same conversation (a fresh system prompt)."""

    later, cold, cached, history = [], [], [], 0
    with http_client() as client:
        for round_ in range(rounds):
            messages: list[dict] = [{"role": "system", "content": f"Conversation {round_} of run {os.getpid()}: you are a travel writer."}]
            for turn in range(turns):
                messages.append({"role": "user", "content": _question(turn)})
                ttft, answer, hit = chat_ttft(client, url, model, messages, MULTI_TURN_ANSWER)
                if turn:
                    later.append(ttft)
                    cached.append(hit)
                    # The same conversation under a system prompt no cache holds: a cold prefill.
                    fresh = [{"role": "system", "content": f"Cold copy {round_}.{turn} of run {os.getpid()}: you are a travel writer."}, *messages[1:]]
                    cold.append(chat_ttft(client, url, model, fresh, 1)[0])
                messages.append({"role": "assistant", "content": answer})
            history = max(history, sum(len(m["content"]) for m in messages))
    return {
        "turns": turns,
        "rounds": rounds,
        "history_chars": history,
        "later_ttft_p50_ms": 1000 * statistics.median(later),
        "cold_ttft_p50_ms": 1000 * statistics.median(cold),
        "later_over_cold": statistics.median(later) / statistics.median(cold),
        "cached_tokens": cached,
    }


def run_server(server: Server, args, embed_model: str | None) -> dict:
    """Every phase against one server; a failure ends its phases but keeps what it measured."""
    print(f"\n== {server.name}: starting (log: {server.log.relative_to(ROOT)})", flush=True)
    figures: dict = {"kind": "HTTP, streaming", "log": str(server.log.relative_to(ROOT))}
    try:
        with server:
            _phases(server, args, embed_model, figures)
    except BaseException as exc:  # a peer that dies or fails is reported, not fatal
        if isinstance(exc, KeyboardInterrupt):
            raise
        exited = server.process.poll() if server.process else None
        figures["error"] = f"{type(exc).__name__}: {exc}"[:500] + (f" (the server exited with {exited})" if exited is not None else "")
        print(f"   FAILED: {figures['error']}; see {server.log}", flush=True)
    return figures


def _phases(server: Server, args, embed_model: str | None, figures: dict) -> None:
    figures["single"] = single_stream(server.url, server.model, args.tokens, args.rounds)
    print(f"   single stream: {figures['single']['decode_tok_s']:.1f} tok/s, TTFT {figures['single']['ttft_ms']:.0f} ms", flush=True)
    figures["concurrent"] = {}
    for streams in args.concurrency:
        result = concurrent(server.url, server.model, args.tokens, streams, args.per_stream)
        # Greedy output must not depend on the company: each answer against the same prompt's answer alone.
        alone = figures["single"]["texts"]
        compared = [text == alone[prompt] for prompt, text in result.pop("texts") if prompt in alone]
        result["same_as_alone"] = [sum(compared), len(compared)]
        figures["concurrent"][str(streams)] = result
        figures["peak_rss_mb_burst"] = peak_rss_mb(server.process.pid)  # peak so far: up to the largest burst
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
        figures["embeddings"]["16 clients"] = embeddings_clients(server.url, embed_model)
        print(f"   embeddings: {figures['embeddings']}", flush=True)
    if "multi-turn" not in args.skip:
        figures["multi_turn"] = turns = multi_turn(server.url, server.model)
        print(
            f"   multi-turn: later turns TTFT p50 {turns['later_ttft_p50_ms']:.0f} ms, cold prefill {turns['cold_ttft_p50_ms']:.0f} ms "
            f"({turns['later_over_cold']:.2f}x); cached tokens {turns['cached_tokens']}",
            flush=True,
        )
    figures["peak_rss_mb"] = peak_rss_mb(server.process.pid)
    print(f"   peak RSS {figures['peak_rss_mb']:.0f} MB", flush=True)
    figures["single"].pop("texts")


def run_llama_server(gguf: Path, args, results: dict, label: str = "") -> None:
    """llama.cpp's own server on `gguf` (8 slots of 2,048 positions), every phase, into `results`."""
    if "llama.cpp" in args.skip:
        results["skipped"]["llama.cpp"] = "--skip"
        return
    if not LLAMA_SERVER.exists():
        results["skipped"]["llama.cpp"] = "llama-server not built: run `make bench-peers`"
        return
    port = free_port()
    version = subprocess.run([str(LLAMA_SERVER), "--version"], capture_output=True, text=True).stderr.strip().splitlines()
    llama = Server(
        f"llama.cpp llama-server{label}",
        [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", "8", "-c", str(8 * 2048), "-t", str(args.threads), "--no-webui"],
        port,
        gguf.name,
    )
    name = f"llama.cpp server -np 8 ({gguf.name.split('.')[-2]})"
    results["systems"][name] = run_server(llama, args, None)
    results["systems"][name]["version"] = version[0] if version else "unknown"
    if "error" in results["systems"][name]:
        results["errors"][name] = results["systems"][name]["error"]


def export_at_size(gguf: Path, engine: Path) -> dict:
    """`appliance export` of the generated GGUF to int4 (parity included): wall time and peak memory."""
    print(f"\n== exporting {gguf.name} to {engine.relative_to(ROOT)} (int4, parity check included)", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "export", str(gguf), "--precision", "int4", "--out", str(engine), "--force"], cwd=ROOT
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"the export of {gguf} failed (exit {process.returncode}); its output is above")
    return {"wall_s": time.perf_counter() - started, "peak_rss_mb": usage.ru_maxrss / 1024}


def size_phase(args) -> dict:
    """Ours and llama-server on a generated GGUF of a real model's shapes, the same phases.

    The file (bench/random_gguf.py: Llama-3.2's shapes, SmolLM2's tokenizer, Q4_1 projections
    and a Q8_0 embedding, random blocks) and its int4 engine are made once and kept under
    bench/peers/; a file newer than its engine is exported again.
    """
    import random_gguf

    from runtime.manifest import read_manifest

    gguf = PEERS / f"llama-{args.size}-shaped.gguf"
    if not gguf.exists():
        print(f"\n== generating {gguf.relative_to(ROOT)} ({random_gguf.SHAPES[args.size]}, random blocks)", flush=True)
        random_gguf.write_random_gguf(gguf, random_gguf.SHAPES[args.size], random_gguf.default_tokenizer_gguf())
    engines = PEERS / f"engines-{args.size}"
    engine = engines / f"llama-{args.size}-shaped-int4"
    manifest = engine / "manifest.json"
    exported = None
    if not manifest.exists() or manifest.stat().st_mtime < gguf.stat().st_mtime:
        exported = export_at_size(gguf, engine)
    name = read_manifest(engine).name
    results: dict = {
        "shape": args.size, "gguf": str(gguf.relative_to(ROOT)), "gguf_mb": gguf.stat().st_size / 1e6,
        "engine_mb": sum(f.stat().st_size for f in engine.iterdir() if f.is_file()) / 1e6, "export": exported,
        "tokens": args.tokens, "threads": args.threads, "concurrency": args.concurrency,
        "systems": {}, "skipped": {}, "embeddings": {}, "errors": {},
    }
    port = free_port()
    ours = Server(f"ours {args.size}", [sys.executable, "-m", "appliance", "serve", "--engines", str(engines), "--port", str(port)], port, name)
    args.structured = "structured" not in args.skip
    results["systems"]["ours"] = run_server(ours, args, None)
    args.structured = False
    if "error" in results["systems"]["ours"]:
        results["errors"]["ours"] = results["systems"]["ours"]["error"]
    run_llama_server(gguf, args, results, f" {args.size}")
    results["targets"] = size_targets(results)
    return results


def size_targets(results: dict) -> list[dict]:
    """The size issue's serving targets, each with its ratio and PASS or MISS."""
    systems = results["systems"]
    ours = systems.get("ours")
    llama = next((f for name, f in systems.items() if name.startswith("llama.cpp")), None)
    rows = []
    for target, path, goal, higher in (
        ("single stream tok/s >= 1.3x llama.cpp", ("single", "decode_tok_s"), 1.3, True),
        ("aggregate tok/s at 8 streams >= 3x llama.cpp", ("concurrent", "8", "aggregate_tok_s"), 3.0, True),
        ("server peak RSS up to the 16-stream burst <= 1.1x llama.cpp's", ("peak_rss_mb_burst",), 1.1, False),
    ):
        mine, theirs = _get(ours, *path), _get(llama, *path)
        if mine is None or not theirs:
            rows.append({"target": target, "status": "N/A", "why": "a figure is missing (a phase skipped or failed)"})
            continue
        value = mine / theirs
        rows.append({"target": target, "ours": mine, "peer": theirs, "value": value, "goal": goal, "unit": "ratio",
                     "status": "PASS" if (value >= goal if higher else value <= goal) else "MISS"})
    return rows


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


def _get(figures: dict | None, *path: str) -> float | None:
    """figures[path[0]][path[1]]..., or None where a phase did not run or failed."""
    value: object = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def targets(results: dict, parity: dict | None) -> list[dict]:
    """The throughput issue's targets: each with our figure, the peer's, the ratio and PASS/MISS."""
    systems = results["systems"]
    ours = systems.get("ours")
    llama = next((f for name, f in systems.items() if name.startswith("llama.cpp")), None)
    st = results["embeddings"].get("sentence-transformers (in-process)")
    our_emb = results["embeddings"].get("ours (HTTP)")
    rows = []

    def add(name: str, ours_value, peer_value, goal: float, higher: bool, unit: str = "ratio") -> None:
        if ours_value is None or (unit == "ratio" and not peer_value):
            rows.append({"target": name, "status": "N/A", "why": "a figure is missing (a phase skipped or failed)"})
            return
        value = ours_value / peer_value if unit == "ratio" else ours_value
        ok = value >= goal if higher else value <= goal
        rows.append({"target": name, "ours": ours_value, "peer": peer_value, "value": value, "goal": goal, "unit": unit, "status": "PASS" if ok else "MISS"})

    add("single stream tok/s >= 1.3x llama.cpp", _get(ours, "single", "decode_tok_s"), _get(llama, "single", "decode_tok_s"), 1.3, True)
    add("aggregate tok/s at 8 streams >= 2.5x llama.cpp (stretch 3x)", _get(ours, "concurrent", "8", "aggregate_tok_s"), _get(llama, "concurrent", "8", "aggregate_tok_s"), 2.5, True)
    add("aggregate tok/s at 16 streams >= 3x llama.cpp", _get(ours, "concurrent", "16", "aggregate_tok_s"), _get(llama, "concurrent", "16", "aggregate_tok_s"), 3.0, True)
    add("TTFT p50 at 8 streams <= 0.5x llama.cpp's", _get(ours, "concurrent", "8", "ttft_p50_ms"), _get(llama, "concurrent", "8", "ttft_p50_ms"), 0.5, False)
    burst = _get(ours, "peak_rss_mb_burst") if _get(ours, "concurrent", "16", "aggregate_tok_s") is not None else None  # only after a 16-stream phase
    add("server peak RSS, both engines, 16-stream burst <= 700 MB", burst, None, 700, False, "MB")
    add("multi-turn: later turns' TTFT <= 0.25x a cold prefill", _get(ours, "multi_turn", "later_over_cold"), None, 0.25, False, "x")
    add("embeddings/s at batch 1 >= 2x sentence-transformers", _get(our_emb, "1"), _get(st, "1"), 2.0, True)
    add("embeddings/s at batch 32 >= 2x sentence-transformers", _get(our_emb, "32"), _get(st, "32"), 2.0, True)
    # 16 clients with a sentence each against sentence-transformers encoding one sentence per call.
    add("embeddings/s, 16 clients x 1 sentence >= 2x sentence-transformers (one per call)", _get(our_emb, "16 clients"), _get(st, "1"), 2.0, True)
    # parity.json of engines exported before the layer-streamed reference names it versus_fp32_engine.
    top1 = _get(parity, "versus_fp32", "top1_agreement") or _get(parity, "versus_fp32_engine", "top1_agreement")
    add("default engine's top-1 agreement with fp32 (parity.json) >= 0.95", top1, None, 0.95, True, "")
    same = (ours or {}).get("concurrent", {}).get("16", {}).get("same_as_alone")
    if same and same[1]:
        rows.append({"target": "greedy output beside 15 others equals greedy output alone", "value": f"{same[0]}/{same[1]}", "status": "PASS" if same[0] == same[1] else "MISS"})
    else:
        rows.append({"target": "greedy output beside 15 others equals greedy output alone", "status": "N/A", "why": "no 16-stream phase"})
    return rows


def print_table(results: dict) -> None:
    systems = results["systems"]
    ours = systems.get("ours", {})
    print("\n" + "=" * 100)
    print(f"greedy, {results['tokens']} new tokens (EOS ignored), {results['threads']} threads; ratio = ours / peer (higher is better for ours)")
    width = max([36, *(len(name) for name in systems)])  # the names column fits the longest name
    header = f"{'system':{width}} {'single tok/s':>12} {'TTFT ms':>8}" + "".join(f" {'agg@' + str(c):>9}" for c in results["concurrency"]) + f" {'RSS@burst':>9} {'RSS peak':>8}"
    print(header)

    def cell(value: float | None, width: int, digits: int = 1) -> str:
        return f" {value:{width}.{digits}f}" if value is not None else f" {'-':>{width}}"

    for name, f in systems.items():
        row = f"{name:{width}}" + cell(_get(f, "single", "decode_tok_s"), 12) + cell(_get(f, "single", "ttft_ms"), 8, 0)
        for c in results["concurrency"]:
            row += cell(_get(f, "concurrent", str(c), "aggregate_tok_s"), 9)
        row += cell(_get(f, "peak_rss_mb_burst"), 9, 0) + cell(_get(f, "peak_rss_mb"), 8, 0)
        print(row + f"   ({f['kind']})")
    print("\nratios ours / peer")
    for name, f in systems.items():
        if name == "ours":
            continue
        parts = []
        for label, path in [("single", ("single", "decode_tok_s"))] + [(f"agg@{c}", ("concurrent", str(c), "aggregate_tok_s")) for c in results["concurrency"]]:
            mine, theirs = _get(ours, *path), _get(f, *path)
            if mine is not None and theirs:
                parts.append(f"{label} {mine / theirs:.2f}x")
        print(f"  vs {name:{width - 3}} " + (", ".join(parts) or "-"))
    print("\nTTFT p50 / p95 ms at each concurrency")
    for name, f in systems.items():
        if f.get("concurrent"):
            print(f"  {name:{width}} " + "  ".join(f"@{c}: {r['ttft_p50_ms']:.0f}/{r['ttft_p95_ms']:.0f}" for c, r in f["concurrent"].items()))
    for name, f in [*systems.items(), ("ours --prefix-cache-decoded", {"multi_turn": results.get("multi_turn_decoded")})]:
        turns = f.get("multi_turn")
        if turns:
            print(
                f"\nmulti-turn chat, {name}: {turns['turns']} turns x {turns['rounds']} rounds, history up to {turns['history_chars']} characters; "
                f"later turns' TTFT p50 {turns['later_ttft_p50_ms']:.0f} ms vs cold prefill {turns['cold_ttft_p50_ms']:.0f} ms = {turns['later_over_cold']:.2f}x"
            )
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
            clients = f"   16 clients x 1: {rates['16 clients']:.0f}" if "16 clients" in rates else ""
            print(f"  {name:36} batch 1: {rates['1']:.0f}   batch 32: {rates['32']:.0f}{clients}")
    if results.get("speculation"):
        from speculation import print_speculation

        print_speculation(results["speculation"])
    for name, why in results["skipped"].items():
        print(f"  skipped {name}: {why}")
    for name, error in results["errors"].items():
        print(f"  FAILED {name}: {error} (log: {systems.get(name, {}).get('log', '-')})")
    print("\ntargets")
    for row in results["targets"]:
        if row["status"] == "N/A":
            print(f"  N/A   {row['target']}: {row['why']}")
            continue
        value = row["value"]
        shown = value if isinstance(value, str) else (f"{value:.0f} MB" if row.get("unit") == "MB" else f"{value:.3f}" if row.get("unit") == "" else f"{value:.2f}x")
        print(f"  {row['status']:5} {row['target']}: {shown}")


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
    parser.add_argument(
        "--skip", nargs="*", default=[],
        help="systems or phases to leave out: llama.cpp, in-process, embeddings, structured, multi-turn, speculation; default: the default model's run (with --size)",
    )
    parser.add_argument(
        "--size", choices=("1b", "3b", "8b"),
        help="then the same phases, ours against llama-server, on a generated GGUF of Llama-3.2-1B's (3B's, Llama-3.1-8B's) shapes, exported to int4 here once",
    )
    parser.add_argument("--json", type=Path, default=PEERS / "serving.json")
    args = parser.parse_args()
    if "default" in args.skip and not args.size:
        raise SystemExit("--skip default leaves nothing to run without --size")

    results = default_run(args) if "default" not in args.skip else {}
    if args.size:
        results["size"] = sized = size_phase(args)
        print(f"\nat size: {sized['gguf']} ({sized['gguf_mb']:.0f} MB), its int4 engine {sized['engine_mb']:.0f} MB", end="")
        export = sized["export"]
        print(f"; exported in {export['wall_s']:.0f} s at {export['peak_rss_mb']:.0f} MB peak" if export else " (exported in an earlier run)")
        print_table(sized)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


def default_run(args) -> dict:
    """Every system on the default models (the engines under --engines)."""

    from export.pull import resolve_default
    from export.sources import resolve_source
    from runtime.manifest import TASK_EMBEDDING, find_engine_dirs, read_manifest

    manifests = [read_manifest(d) for d in find_engine_dirs(args.engines)]
    decoders = [m for m in manifests if m.task != TASK_EMBEDDING]
    encoders = [m for m in manifests if m.task == TASK_EMBEDDING]
    if not decoders:
        raise SystemExit(f"no decoder engine under {args.engines}: run `make engines` first")
    decoder = next((m for m in decoders if m.name == args.decoder), decoders[0]) if args.decoder else decoders[0]
    encoder = encoders[0].name if encoders else None
    engine_dir = next(d for d in find_engine_dirs(args.engines) if read_manifest(d).name == decoder.name)
    results = {"tokens": args.tokens, "threads": args.threads, "concurrency": args.concurrency, "systems": {}, "skipped": {}, "embeddings": {}, "errors": {}}
    results["ours_engine"] = {"name": decoder.name, "precision": decoder.precision}

    port = free_port()
    ours = Server("ours", [sys.executable, "-m", "appliance", "serve", "--engines", str(args.engines), "--port", str(port)], port, decoder.name)
    args.structured = "structured" not in args.skip
    figures = run_server(ours, args, encoder if "embeddings" not in args.skip else None)
    args.structured = False  # the peers' servers are not asked for constrained output
    if "embeddings" in figures:
        results["embeddings"]["ours (HTTP)"] = figures.pop("embeddings")
    if "error" in figures:
        results["errors"]["ours"] = figures["error"]
    results["systems"]["ours"] = figures
    if "multi-turn" not in args.skip:
        # The same chat with generated tokens' positions reused too (serve --prefix-cache-decoded).
        port = free_port()
        decoded = Server("ours --prefix-cache-decoded", [*ours.command[:-1], str(port), "--prefix-cache-decoded"], port, decoder.name)
        print(f"\n== {decoded.name}: multi-turn only (log: {decoded.log.relative_to(ROOT)})", flush=True)
        try:
            with decoded:
                results["multi_turn_decoded"] = turns = multi_turn(decoded.url, decoded.model)
            print(f"   later turns TTFT p50 {turns['later_ttft_p50_ms']:.0f} ms, cold {turns['cold_ttft_p50_ms']:.0f} ms ({turns['later_over_cold']:.2f}x)", flush=True)
        except Exception as exc:  # reported, not fatal
            results["errors"][decoded.name] = f"{type(exc).__name__}: {exc}"[:500]

    if "speculation" not in args.skip:
        # Ours without and with --speculate ngram, a lone stream on copying and free prompts (bench/speculation.py).
        from speculation import speculation_phase

        try:
            gguf = resolve_source(args.source).path if "llama.cpp" not in args.skip else None
            results["speculation"] = speculation_phase(args.engines, decoder.name, gguf=gguf, threads=args.threads)
        except Exception as exc:  # reported, not fatal
            results["errors"]["ours --speculate ngram"] = f"{type(exc).__name__}: {exc}"[:500]

    run_llama_server(resolve_source(args.source).path, args, results)

    if "in-process" not in args.skip:
        from runtime.engine import load_engine
        from runtime.settings import RuntimeSettings

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
    parity_file = engine_dir / "parity.json"
    parity = json.loads(parity_file.read_text()) if parity_file.exists() else None
    results["targets"] = targets(results, parity)
    if "speculation" not in args.skip:
        from speculation import speculation_targets

        results["targets"] += speculation_targets(results.get("speculation", {}))
    print_table(results)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
