"""What the HTTP layer costs: the same greedy generations in-process and through the server.

Starts `appliance serve` on a free loopback port with the given engine, then runs the same
chat prompts, greedy, exactly N new tokens (EOS ignored), in interleaved rounds:

* runtime: TextGenerator in this process (the decode loop alone);
* openai-sse: POST /v1/chat/completions with stream=true, read as the frames arrive;
* ollama-ndjson: POST /api/chat (streams by default).

Time to first token is measured from sending the request to the first text; decode tokens/s
over the remaining tokens, up to the last one's arrival.

    python bench/api_overhead.py engines/smollm2-135m-instruct-fp32 [--tokens 128 --rounds 3]
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
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.engine import load_engine  # noqa: E402
from runtime.events import Delta, Finish  # noqa: E402
from runtime.generation import GenerationRequest, TextGenerator  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain briefly why the sky is blue during the day.",
    "List five unusual uses for a paperclip and say why each works.",
)


def start_server(engine: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--engines", str(engine), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become healthy in 120 s")


def run_runtime(generator: TextGenerator, prompt: str, tokens: int) -> tuple[float, float, int]:
    ids = tuple(generator.chat_prompt_ids([{"role": "user", "content": prompt}]))
    request = GenerationRequest(ids, SamplingParams(temperature=0), max_tokens=tokens, ignore_eos=True)
    started, first, last, count = time.perf_counter(), None, None, 0
    for event in generator.generate(request):
        if isinstance(event, Delta):
            now = time.perf_counter()
            first = first or now
            last = now
        elif isinstance(event, Finish):
            count = event.usage.completion_tokens
    return first - started, (count - 1) / (last - first), count


def run_http(url: str, route: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    messages = [{"role": "user", "content": prompt}]
    if route == "openai-sse":
        path, body = "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                                              "stream": True, "stream_options": {"include_usage": True}}
    else:
        path, body = "/api/chat", {"model": model, "messages": messages, "ignore_eos": True,
                                   "options": {"num_predict": tokens, "temperature": 0, "repeat_penalty": 1.0}}
    started, first, last, count = time.perf_counter(), None, None, 0
    with httpx.stream("POST", url + path, json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line or line == "data: [DONE]":
                continue
            data = json.loads(line.removeprefix("data: "))
            text = (data["choices"][0]["delta"].get("content") if data.get("choices") else None) if route == "openai-sse" else (
                data["message"]["content"] if not data.get("done") else None)
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
            if data.get("usage"):
                count = data["usage"]["completion_tokens"]
            if data.get("done"):
                count = data["eval_count"]
    return first - started, (count - 1) / (last - first), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    process, url = start_server(args.engine.resolve())
    try:
        generator = TextGenerator(load_engine(args.engine))
        model = generator.name
        results: dict[str, list[tuple[float, float]]] = {"runtime": [], "openai-sse": [], "ollama-ndjson": []}
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                ttft, rate, _ = run_runtime(generator, prompt, args.tokens)
                results["runtime"].append((ttft, rate))
                for route in ("openai-sse", "ollama-ndjson"):
                    ttft, rate, count = run_http(url, route, model, prompt, args.tokens)
                    assert count == args.tokens, f"{route} generated {count} tokens"
                    results[route].append((ttft, rate))
        base = statistics.median(r for _, r in results["runtime"])
        print(f"{'path':16} {'TTFT ms':>9} {'decode tok/s':>13} {'÷ runtime':>10}   ({len(PROMPTS)} prompts × {args.rounds} rounds, {args.tokens} tokens)")
        for name, runs in results.items():
            ttft = statistics.median(t for t, _ in runs) * 1000
            rate = statistics.median(r for _, r in runs)
            print(f"{name:16} {ttft:9.1f} {rate:13.1f} {rate / base:10.3f}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
