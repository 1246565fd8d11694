"""A bounded soak test of `appliance serve`: many concurrent clients for a fixed time, loopback only.

Starts the server on a free loopback port (or uses --url), sends 8 requests of each kind one
by one, then runs --clients threads for --warmup seconds and, after 10 s idle, for --duration
seconds, each looping over a random mix of requests: streamed chat (35 %), streamed legacy
completions (15 %), Ollama streamed chat (15 %), embeddings of 1..32 inputs (20 %), and
streamed chats closed after 1..10 frames (15 %).

Every response is validated (status, every frame parsed, terminator present, no error frame,
the right number of vectors). A 429/503 with Retry-After is deliberate back-pressure, counted
apart (the client waits as told); anything else unexpected is an error. At the end: a table
per kind, resident memory of the gunicorn master and its children (private and mapped-file
pages apart) after the first requests, after the warm-up, right after the load and after 10 s
idle, /health and a few /metrics samples, and the verdict: PASS when nothing failed, no slot
is still held, private memory grew over the measured load (idle to idle) by at most
max(5 % of it, 50 MB), and mapped-file memory grew by no more than the engines' file sizes.
The warm-up is there because the first minute of traffic allocates once what later traffic
reuses; its figures are printed too. Exit code 0 on PASS, 1 on FAIL; a server it started is
always stopped.

    python bench/soak.py [--clients 64] [--duration 300] [--serve-arg=--threads=96] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import free_port, process_tree

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"chat": 35, "completions": 15, "ollama": 15, "embeddings": 20, "cancel": 15}
PROMPTS = (
    "Explain briefly why the sky is blue.",
    "Write a haiku about a lighthouse in winter.",
    "List three uses for a paperclip.",
    "Écris une phrase sur la pluie à Paris, s'il te plaît.",
    "Was ist der Unterschied zwischen Kometen und Asteroiden? Antworte kurz.",
    "日本の首都はどこですか？一文で答えてください。",
    "Расскажи короткую историю о коте.",
    "Summarize the plot of an invented heist movie in two sentences. 🎬🍿",
    "What is 17 times 23? Show your steps.",
    "Give me a JSON object with keys name and age for a fictional person.",
)
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Ein Würfel hat sechs Seiten.", "雨の日は本を読むのが好きです。",
             "Soak tests find leaks that unit tests miss.", "¿Dónde está la biblioteca?", "Embeddings map text to vectors.")
# /metrics samples that show whether finished and cancelled generations gave their slots back.
METRICS = ("appliance_generations_total", "appliance_active_generations", "appliance_queue_depth", "appliance_completion_tokens_total")
MAX_SAMPLES = 20


class Failure(Exception):
    """A response that does not look right; `kind` names the failure in the summary."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class BackPressure(Exception):
    """A 429/503 with Retry-After: the server asked us to wait, which is not an error."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Retry-After {retry_after}")
        self.retry_after = retry_after


# -- the server and its memory ----------------------------------------------------------------


class ManagedServer:
    """`python -m appliance serve` on a free loopback port, logging to a temp file."""

    def __init__(self, engines: Path, serve_args: list[str], api_key_file: Path | None) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = Path(tempfile.mkstemp(prefix="soak-server-", suffix=".log")[1])
        command = [sys.executable, "-m", "appliance", "serve", "--engines", str(engines), "--port", self.url.rsplit(":", 1)[1], *serve_args]
        if api_key_file:
            command += ["--api-key-file", str(api_key_file)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = self.log_path.open("wb")
        # Its own session: Ctrl-C in the terminal reaches only us, and we stop the server in order.
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
        self.pid = self.process.pid  # the CLI execs gunicorn: this is the master

    def wait_healthy(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.flush()
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"the server exited with {self.process.returncode} while starting:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the server was not healthy within {timeout:.0f} s; log: {self.log_path}")

    def stop(self, grace: float = 30) -> None:
        """SIGTERM to the master (gunicorn drains its workers), SIGKILL to the whole group after `grace` s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"soak: the server ignored SIGTERM for {grace:.0f} s; killing it", file=sys.stderr)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def memory_mb(pid: int | None) -> dict | None:
    """Resident memory of `pid` and all its descendants, in MB (None without a pid).

    "anon" is private memory (heaps, arenas, the KV pool): what a leak grows. "file" is pages of
    mapped files (the engines' weights, libraries) and shared memory: clean, reclaimable, and at
    most the size of those files; ONNX Runtime maps an engine's weights and a page counts once a
    step first reads it, so the embedding rows of tokens not seen before add to it for a while.
    """
    if pid is None:
        return None
    fields = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "file"}
    total = {"anon": 0.0, "file": 0.0}
    for p in process_tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue  # a process that exited between the listing and the read
        for line in lines:
            name, *value = line.split()
            if name in fields:
                total[fields[name]] += int(value[0]) / 1024
    total["total"] = total["anon"] + total["file"]
    return total


def engine_files_mb(engines: Path) -> float:
    """Size of the files under the engines directory: the most their mapped pages can add."""
    return sum(f.stat().st_size for f in Path(engines).rglob("*") if f.is_file()) / 1e6


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mt, mv = sum(t for t, _ in samples) / n, sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 60 * sum((t - mt) * (v - mv) for t, v in samples) / var if var else None


def api_key(path: Path | None) -> str | None:
    """The first line of the key file that is neither blank nor a # comment (the server's own rule)."""
    if path is None:
        return None
    keys = [s for s in (line.strip() for line in path.read_text().splitlines()) if s and not s.startswith("#")]
    if not keys:
        raise SystemExit(f"{path} holds no API key")
    return keys[0]


def discover_models(client: httpx.Client, url: str, engines: Path) -> tuple[str, str | None]:
    """(text model, embedding model) among those /v1/models lists: by manifest task, else by probing /v1/embeddings."""
    response = client.get(f"{url}/v1/models")
    if response.status_code != 200:
        raise SystemExit(f"GET /v1/models answered {response.status_code}: {response.text[:200]} (need --api-key-file?)")
    tasks = {}
    for manifest in [engines / "manifest.json", *engines.glob("*/manifest.json")]:
        if manifest.exists():
            data = json.loads(manifest.read_text())
            tasks[data.get("name", manifest.parent.name)] = data.get("task")
    text = embed = None
    for name in (m["id"] for m in response.json()["data"]):
        task = tasks.get(name)
        if task is None:  # not in our engines folder (--url)
            ok = client.post(f"{url}/v1/embeddings", json={"model": name, "input": "probe"}).status_code == 200
            task = "feature-extraction" if ok else "text-generation"
        if task == "text-generation":
            text = text or name
        elif task == "feature-extraction":
            embed = embed or name
    if text is None:
        raise SystemExit("the server lists no text-generation model")
    return text, embed


# -- the requests: each returns (tokens received, time to first token or None, time to response headers) ----


def check_status(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    response.read()
    retry = response.headers.get("retry-after")
    if response.status_code in (429, 503) and retry is not None:
        raise BackPressure(float(retry) if retry.isdigit() else 1.0)
    raise Failure(f"http_{response.status_code}", response.text[:200])


def read_sse(response: httpx.Response, started: float, text_of, stop_after: int | None) -> tuple[int, float | None]:
    """Validate an SSE stream; (completion tokens, TTFT). With `stop_after`, return after that many data frames."""
    frames = tokens = 0
    ttft = usage = None
    done = finished = False
    for line in response.iter_lines():
        if not line or line.startswith(":"):
            continue  # frame separators and keep-alive comments
        if done or not line.startswith("data: "):
            raise Failure("bad_line", f"{'after [DONE]: ' if done else ''}{line[:200]}")
        if line == "data: [DONE]":
            done = True
            continue
        try:
            frame = json.loads(line[6:])
        except ValueError:
            raise Failure("bad_json", line[:200]) from None
        if "error" in frame:
            raise Failure("error_frame", json.dumps(frame["error"], ensure_ascii=False)[:200])
        frames += 1
        usage = frame.get("usage") or usage
        for choice in frame.get("choices", []):
            if text_of(choice):
                tokens += 1
                ttft = ttft if ttft is not None else time.perf_counter() - started
            finished = finished or choice.get("finish_reason") is not None
        if stop_after is not None and frames >= stop_after:
            return tokens, ttft  # the caller closes the connection mid-stream: a deliberate cancellation
    if not done:
        raise Failure("no_done", f"the stream ended without data: [DONE] after {frames} frames")
    if not finished:
        raise Failure("no_finish", "no choice carried a finish_reason")
    return (usage or {}).get("completion_tokens", tokens), ttft


class Requests:
    """One client's requests, drawn from its own random generator."""

    def __init__(self, client: httpx.Client, url: str, models: tuple[str, str | None], rng: random.Random, max_tokens: int) -> None:
        self.client, self.url, (self.text_model, self.embed_model), self.rng, self.max_tokens = client, url, models, rng, max_tokens

    def _openai(self, legacy: bool = False, cancel: bool = False):
        prompt, rng = self.rng.choice(PROMPTS), self.rng
        body = {"model": self.text_model, "max_tokens": 200 if cancel else rng.randint(8, self.max_tokens), "temperature": 0.7,
                "stream": True, "stream_options": {"include_usage": True}}
        if legacy:
            body["prompt"], path, text_of = prompt, "/v1/completions", lambda c: c.get("text")
        else:
            body["messages"], path = [{"role": "user", "content": prompt}], "/v1/chat/completions"
            text_of = lambda c: (c.get("delta") or {}).get("content")  # noqa: E731
        started = time.perf_counter()
        with self.client.stream("POST", self.url + path, json=body) as response:  # leaving it closes the connection
            headers_s = time.perf_counter() - started
            check_status(response)
            tokens, ttft = read_sse(response, started, text_of, rng.randint(1, 10) if cancel else None)
        return tokens, ttft, headers_s

    def chat(self):
        return self._openai()

    def completions(self):
        return self._openai(legacy=True)

    def cancel(self):
        return self._openai(cancel=True)

    def ollama(self):
        body = {"model": self.text_model, "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}], "stream": True,
                "options": {"num_predict": self.rng.randint(8, self.max_tokens), "temperature": 0.7}}
        started = time.perf_counter()
        tokens, ttft, last = 0, None, None
        with self.client.stream("POST", f"{self.url}/api/chat", json=body) as response:
            headers_s = time.perf_counter() - started
            check_status(response)
            for line in filter(str.strip, response.iter_lines()):
                if last and last.get("done"):
                    raise Failure("bad_line", f"after done: {line[:200]}")
                try:
                    last = json.loads(line)
                except ValueError:
                    raise Failure("bad_json", line[:200]) from None
                if "error" in last:
                    raise Failure("error_line", str(last["error"])[:200])
                if (last.get("message") or {}).get("content"):
                    tokens += 1
                    ttft = ttft if ttft is not None else time.perf_counter() - started
        if not last or last.get("done") is not True:
            raise Failure("no_done", "the NDJSON stream did not end with done: true")
        return last.get("eval_count", tokens), ttft, headers_s

    def embeddings(self):
        texts = [f"{self.rng.choice(SENTENCES)} #{self.rng.randint(0, 10**6)}" for _ in range(self.rng.randint(1, 32))]
        started = time.perf_counter()
        response = self.client.post(f"{self.url}/v1/embeddings", json={"model": self.embed_model, "input": texts})
        headers_s = time.perf_counter() - started
        check_status(response)
        data = response.json().get("data", [])
        if len(data) != len(texts) or any(not item.get("embedding") for item in data):
            raise Failure("wrong_count", f"{len(texts)} inputs, {len(data)} vectors")
        return 0, None, headers_s


# -- the soak ---------------------------------------------------------------------------------


class Stats:
    """Per request kind: latencies, TTFTs, header waits, errors, back-pressure; shared by all clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency, self.ttft, self.headers = defaultdict(list), defaultdict(list), defaultdict(list)
        self.errors, self.backpressure, self.error_kinds = defaultdict(int), defaultdict(int), defaultdict(int)
        self.samples: list[str] = []
        self.tokens = 0

    def record(self, kind: str, call) -> float:
        """Run one request and file its outcome; returns how long the server asked us to wait (0 if not)."""
        started = time.perf_counter()
        try:
            tokens, ttft, headers_s = call()
        except BackPressure as exc:
            with self.lock:
                self.backpressure[kind] += 1
            return exc.retry_after
        except Failure as exc:
            self.error(kind, exc.kind, str(exc))
        except httpx.HTTPError as exc:  # timeouts, refused or dropped connections, broken chunked encoding
            self.error(kind, type(exc).__name__, str(exc)[:200] or repr(exc))
        except Exception as exc:  # e.g. a body that is not JSON: still an error, and the client goes on
            self.error(kind, type(exc).__name__, str(exc)[:200])
        else:
            with self.lock:
                self.latency[kind].append(time.perf_counter() - started)
                self.headers[kind].append(headers_s)
                self.ttft[kind] += [ttft] if ttft is not None else []
                self.tokens += tokens
        return 0.0

    def error(self, kind: str, what: str, message: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.error_kinds[f"{kind}:{what}"] += 1
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(f"{time.strftime('%H:%M:%S')} {kind} {what}: {message}")


def client_loop(index: int, args, url: str, headers: dict, models, deadline: float, stats: Stats, stop: threading.Event) -> None:
    rng = random.Random(args.seed * 1000 + index)
    weights = {k: w for k, w in WEIGHTS.items() if models[1] or k != "embeddings"}
    with httpx.Client(headers=headers, timeout=httpx.Timeout(120, connect=10)) as client:
        requests = Requests(client, url, models, rng, args.max_tokens)
        while time.monotonic() < deadline and not stop.is_set():
            kind = rng.choices(list(weights), list(weights.values()))[0]
            wait = stats.record(kind, getattr(requests, kind))
            if wait:
                stop.wait(min(wait, max(0.0, deadline - time.monotonic())))


def pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else None


def summarize(stats: Stats, elapsed: float) -> dict:
    kinds = {}
    for kind in WEIGHTS:
        lat, ttft = stats.latency[kind], stats.ttft[kind]
        kinds[kind] = {"ok": len(lat), "errors": stats.errors[kind], "backpressure": stats.backpressure[kind],
                       "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95), "max_s": max(lat, default=None),
                       "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95), "headers_max_s": max(stats.headers[kind], default=None)}
    done = sum(k["ok"] + k["errors"] for k in kinds.values())
    return {"kinds": kinds, "requests": done, "errors": sum(stats.errors.values()), "backpressure": sum(stats.backpressure.values()),
            "tokens": stats.tokens, "elapsed_s": elapsed, "requests_per_s": done / elapsed, "tokens_per_s": stats.tokens / elapsed,
            "error_kinds": dict(stats.error_kinds), "error_samples": stats.samples}


def print_report(result: dict) -> None:
    def ms(v):
        return "-" if v is None else f"{v * 1000:.0f}"

    print(f"\n{'kind':<12}{'ok':>7}{'err':>6}{'429/503':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'ttft50':>8}{'ttft95':>8}{'hdr max':>9}")
    for kind, k in result["kinds"].items():
        print(f"{kind:<12}{k['ok']:>7}{k['errors']:>6}{k['backpressure']:>9}{ms(k['p50_s']):>9}{ms(k['p95_s']):>9}{ms(k['max_s']):>9}"
              f"{ms(k['ttft_p50_s']):>8}{ms(k['ttft_p95_s']):>8}{ms(k['headers_max_s']):>9}")
    print(f"\n{result['requests']} requests in {result['elapsed_s']:.1f} s ({result['requests_per_s']:.1f}/s), {result['tokens']} tokens "
          f"({result['tokens_per_s']:.1f}/s), {result['errors']} errors, {result['backpressure']} back-pressure (429/503 + Retry-After)")
    for what, n in sorted(result["error_kinds"].items()):
        print(f"  error {what}: {n}")
    for sample in result["error_samples"]:
        print(f"  sample {sample}")
    mem = result["memory_mb"]
    if mem["before"] is not None:
        def show(m):
            return f"{m['anon']:.0f} private + {m['file']:.0f} mapped files = {m['total']:.0f}"
        print(f"warm-up: {result['warmup_s']:.0f} s, {result['warmup']['requests']} requests, {result['warmup']['errors']} errors")
        print("memory (RSS of master + workers, MB):")
        print(f"  after the first requests  {show(mem['cold'])}")
        print(f"  after the warm-up, idle   {show(mem['before'])}")
        print(f"  peak during the load      {mem['peak_during']:.0f}")
        print(f"  right after the load      {show(mem['after'])}")
        print(f"  after 10 s idle           {show(mem['after_idle'])}")
        slope = mem["anon_slope_mb_per_min_second_half"]
        print(f"  private memory growth over the load: {mem['after_idle']['anon'] - mem['before']['anon']:+.0f} MB idle to idle"
              + (f"; slope over its second half {slope:+.1f} MB/min" if slope is not None else ""))
    if result["workers_before"] != result["workers_after"]:
        print(f"note: the server's processes changed (a worker restarted?): {result['workers_before']} -> {result['workers_after']}")
    print(f"/health: {json.dumps(result['health'], ensure_ascii=False)}")
    for name, value in result["metrics"].items():
        print(f"  {name} {value:g}")


def run_load(args, url: str, headers: dict, models, seconds: float, stats: Stats, pid: int | None, label: str,
             samples: list[tuple[float, float]]) -> tuple[float, float | None]:
    """--clients threads for `seconds`; returns (elapsed s, peak total RSS MB). Appends (s, anon MB) to `samples`."""
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + seconds
    threads = [threading.Thread(target=client_loop, args=(i, args, url, headers, models, deadline, stats, stop), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    peak, tick = None, 0
    try:
        while any(t.is_alive() for t in threads):  # memory sampled every second, progress every 10 s
            time.sleep(1)
            tick += 1
            mem = memory_mb(pid)
            if mem is not None:
                peak = max(peak or 0.0, mem["total"])
                samples.append((time.monotonic() - started, mem["anon"]))
            busy = sum(t.is_alive() for t in threads)
            if tick % 10 == 0:
                with stats.lock:
                    done, errors = sum(map(len, stats.latency.values())), sum(stats.errors.values())
                memory = f"  anon {mem['anon']:.0f} MB  file {mem['file']:.0f} MB" if mem is not None else ""
                print(f"soak {label}: {time.monotonic() - started:5.0f} s  {done} ok  {errors} errors{memory}  {busy} clients busy",
                      file=sys.stderr)
            if time.monotonic() > deadline + 300:  # generous: a request may take up to its 120 s timeout
                stats.error("soak", "stuck", f"{busy} clients still busy 300 s past the deadline")
                break
    finally:
        stop.set()  # on Ctrl-C too: clients stop after their current request (daemon threads in any case)
    return time.monotonic() - started, peak


def idle_memory(pid: int | None, seconds: float = 10) -> dict | None:
    time.sleep(seconds)
    return memory_mb(pid)


def soak(args, url: str, pid: int | None, headers: dict) -> dict:
    with httpx.Client(headers=headers, timeout=30) as client:
        models = discover_models(client, url, args.engines)
    print(f"soak: text model {models[0]}, embedding model {models[1]}; first requests", file=sys.stderr)
    warm = Stats()
    with httpx.Client(headers=headers, timeout=120) as client:
        requests = Requests(client, url, models, random.Random(args.seed), args.max_tokens)
        for _ in range(8):
            for kind in ("chat", "completions", "ollama", "embeddings") if models[1] else ("chat", "completions", "ollama"):
                warm.record(kind, getattr(requests, kind))
    cold = idle_memory(pid, 0)
    # The warm-up is the same load, for --warmup seconds: the first minute of traffic allocates once what every later
    # minute reuses (request threads' malloc arenas, ONNX Runtime's buffers at each batch size and prompt length).
    # Memory is compared idle to idle, after it and after the measured load, so in-flight buffers count in neither.
    if args.warmup > 0:
        run_load(args, url, headers, models, args.warmup, warm, pid, "warm-up", [])
    if warm.samples:
        print("soak: warm-up errors:\n  " + "\n  ".join(warm.samples), file=sys.stderr)
    workers_before, before = sorted(process_tree(pid)[1:]) if pid else [], idle_memory(pid)

    stats, samples = Stats(), []
    elapsed, peak = run_load(args, url, headers, models, args.duration, stats, pid, "measured", samples)
    after = memory_mb(pid)
    after_idle = idle_memory(pid)
    with httpx.Client(headers=headers, timeout=30) as client:
        health = client.get(f"{url}/health")
        health = health.json() if health.headers.get("content-type", "").startswith("application/json") else health.text
        metrics = client.get(f"{url}/metrics")
        metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in metrics.text.splitlines() if metrics.status_code == 200 and line.startswith(METRICS)}

    result = summarize(stats, elapsed)
    half = [(t, v) for t, v in samples if t >= elapsed / 2]
    result.update(clients=args.clients, duration_s=args.duration, warmup_s=args.warmup, models=models, health=health, metrics=metrics,
                  warmup={"requests": sum(map(len, warm.latency.values())) + sum(warm.errors.values()),
                          "errors": sum(warm.errors.values()), "error_samples": warm.samples},
                  memory_mb={"cold": cold, "before": before, "peak_during": peak, "after": after, "after_idle": after_idle,
                             "anon_slope_mb_per_min_second_half": slope_mb_per_min(half),
                             "engine_files": engine_files_mb(args.engines)},
                  workers_before=workers_before, workers_after=sorted(process_tree(pid)[1:]) if pid else [])
    reasons = [f"{result['errors']} errors"] if result["errors"] else []
    if result["warmup"]["errors"]:
        reasons.append(f"{result['warmup']['errors']} errors during the warm-up")
    if result["requests"] == 0:
        reasons.append("no request completed")
    # Nothing may still hold a slot or wait for one after the idle time: /metrics' gauges, and /health's per-engine
    # scheduler figures where it has them ("generators" now, perhaps "schedulers" later).
    busy = sum(v for k, v in metrics.items() if k.startswith(("appliance_active_generations", "appliance_queue_depth")))
    groups = [health.get(key) for key in ("generators", "schedulers")] if isinstance(health, dict) else []
    engines = [e for g in groups if isinstance(g, dict) for e in g.values() if isinstance(e, dict)]
    busy = max(busy, sum(e.get("active", 0) + e.get("waiting", 0) for e in engines))
    if busy:
        reasons.append(f"{busy:g} generations still active or queued after 10 s idle")
    if before is not None and after_idle is not None:
        # A leak grows private memory: that is the bar. Mapped engine pages may add at most the engines' size.
        grew, allowed = after_idle["anon"] - before["anon"], max(0.05 * before["anon"], 50.0)
        if grew > allowed:
            reasons.append(f"private memory grew {grew:.0f} MB by the end of the idle time (allowed {allowed:.0f} MB)")
        file_grew, files = after_idle["file"] - cold["file"], result["memory_mb"]["engine_files"]
        if file_grew > files:
            reasons.append(f"mapped-file memory grew {file_grew:.0f} MB since the first requests, more than the engines' "
                           f"{files:.0f} MB of files")
    result.update(verdict="FAIL" if reasons else "PASS", reasons=reasons, memory_checked=before is not None)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=Path, default=ROOT / "engines", help="engines directory (default: engines)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent client threads (default: 64)")
    parser.add_argument("--duration", type=float, default=300, help="seconds of measured load (default: 300)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds of the same load before the memory baseline (default: 60)")
    parser.add_argument("--url", help="use the server already running at this URL instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the gunicorn master's pid, for the memory figures")
    parser.add_argument("--api-key-file", type=Path, help="pass to the server, and send its first key as a Bearer token")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' random choices (default: 0)")
    parser.add_argument("--max-tokens", type=int, default=64, help="most new tokens per generation (default: 64)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `appliance serve` argument, repeatable: --serve-arg=--threads=96")
    args = parser.parse_args()

    key = api_key(args.api_key_file)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    server = None if args.url else ManagedServer(args.engines.resolve(), args.serve_arg, args.api_key_file)
    try:
        if server:
            print(f"soak: starting the server on {server.url} (log: {server.log_path})", file=sys.stderr)
            server.wait_healthy()
        result = soak(args, server.url if server else args.url.rstrip("/"), server.pid if server else args.pid, headers)
    except KeyboardInterrupt:
        print("\nsoak: interrupted", file=sys.stderr)
        return 1
    finally:
        if server:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the server running
            server.stop()
            print(f"soak: server stopped (log: {server.log_path})", file=sys.stderr)
    print_report(result)
    if not result["memory_checked"]:
        print("note: memory not checked (give --pid with --url)")
    print(f"\nverdict: {result['verdict']}" + (f" ({'; '.join(result['reasons'])})" if result["reasons"] else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return 1 if result["reasons"] else 0


if __name__ == "__main__":
    sys.exit(main())
