"""What the HTTP layer costs: the same greedy generations in-process and through the server.

Starts `appliance serve` on a free loopback port with the given engine, then runs the same
chat prompts, greedy, exactly N new tokens (EOS ignored), in interleaved rounds:

* runtime: TextGenerator in this process (the decode loop alone);
* openai-sse: POST /v1/chat/completions with stream=true, read as the frames arrive;
* ollama-ndjson: POST /api/chat (streams by default);
* responses-sse: POST /v1/responses with stream=true (typed events; the response is stored).

Time to first token is measured from sending the request to the first text; decode tokens/s
over the remaining tokens, up to the last one's arrival.

First it times what one token costs the HTTP layer to write: building and encoding one SSE
chunk and one NDJSON line, with the wire models (msgspec structs, what the server runs) and
as the previous version did it (a dict per frame, `json.dumps`), same text, same fields.

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
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.engine import load_engine  # noqa: E402
from runtime.events import Delta, Finish  # noqa: E402
from runtime.generation import TextGenerator  # noqa: E402
from runtime.request import GenerationRequest  # noqa: E402
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
        [sys.executable, "-m", "appliance", "serve", "--engines", str(engine), "--port", str(port)],
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
    elif route == "responses-sse":
        path, body = "/v1/responses", {"model": model, "input": prompt, "max_output_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    else:
        path, body = "/api/chat", {"model": model, "messages": messages, "ignore_eos": True,
                                   "options": {"num_predict": tokens, "temperature": 0, "repeat_penalty": 1.0}}
    started, first, last, count = time.perf_counter(), None, None, 0
    with httpx.stream("POST", url + path, json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line or line == "data: [DONE]" or line.startswith("event: "):
                continue
            data = json.loads(line.removeprefix("data: "))
            if route == "responses-sse":
                text = data.get("delta") if data["type"] == "response.output_text.delta" else None
                if data["type"] in ("response.completed", "response.incomplete"):
                    count = data["response"]["usage"]["output_tokens"]
            elif route == "openai-sse":
                text = data["choices"][0]["delta"].get("content") if data.get("choices") else None
            else:
                text = data["message"]["content"] if not data.get("done") else None
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
            if route == "openai-sse" and data.get("usage"):
                count = data["usage"]["completion_tokens"]
            if data.get("done"):
                count = data["eval_count"]
    return first - started, (count - 1) / (last - first), count


def frame_encoding_cost(frames: int = 20_000) -> dict[str, float]:
    """Microseconds to build and encode one per-token frame: the wire models against dicts + json.dumps."""
    from api.generation.runs import Choice
    from api.ollama import protocol as ollama
    from api.openai import protocol as openai
    from runtime.events import Delta as RuntimeDelta

    text = " ça"
    choice = Choice(0, 0, GenerationRequest((1, 2, 3)))
    chat_plan = openai.Plan("smollm2-135m-instruct-int4", [choice], stream=True)
    ndjson_plan = ollama.Plan("smollm2-135m-instruct-int4", choice, stream=True, logprobs=False, top_logprobs=0, chat=True)
    events = [(choice, RuntimeDelta(text, (7,)))] * frames

    def models_sse() -> None:
        stream = openai.chat_stream(chat_plan, iter(events), "chatcmpl-0123456789abcdef01234567", 1750000000, "ab" * 32)
        for _ in stream:
            pass

    def models_ndjson() -> None:
        for _ in ollama.stream(ndjson_plan, iter(events), lambda: 1750000000.25):
            pass

    def dumps(value: object) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def dicts_sse() -> None:
        head = {"id": "chatcmpl-0123456789abcdef01234567", "object": "chat.completion.chunk", "created": 1750000000, "model": chat_plan.model, "system_fingerprint": "fp_abababab"}
        for _, event in events:
            chunk = {**head, "choices": [{"index": 0, "delta": {"content": event.text}, "logprobs": None, "finish_reason": None}]}
            f"data: {dumps(chunk)}\n\n".encode()

    def dicts_ndjson() -> None:
        for _, event in events:
            created_at = ollama.timestamp(1750000000.25)
            line = {"model": ndjson_plan.model, "created_at": created_at, "message": {"role": "assistant", "content": event.text}, "done": False}
            f"{dumps(line)}\n".encode()

    results = {}
    for name, run in (("sse, wire models", models_sse), ("sse, dicts + json", dicts_sse), ("ndjson, wire models", models_ndjson), ("ndjson, dicts + json", dicts_ndjson)):
        best = min(_timed(run) for _ in range(5))
        results[name] = best / frames * 1e6
    return results


def _timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encode-only", action="store_true", help="only time the per-token frame encoding")
    args = parser.parse_args()
    print(f"{'per-token frame':22} {'µs':>6}   (build + encode, best of 5 × 20,000 frames)")
    for name, micros in frame_encoding_cost().items():
        print(f"{name:22} {micros:6.2f}")
    if args.encode_only:
        return
    process, url = start_server(args.engine.resolve())
    try:
        generator = TextGenerator(load_engine(args.engine))
        model = generator.name
        results: dict[str, list[tuple[float, float]]] = {"runtime": [], "openai-sse": [], "ollama-ndjson": [], "responses-sse": []}
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                ttft, rate, _ = run_runtime(generator, prompt, args.tokens)
                results["runtime"].append((ttft, rate))
                for route in ("openai-sse", "ollama-ndjson", "responses-sse"):
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
