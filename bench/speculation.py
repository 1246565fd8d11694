"""The speculative-decoding phase of `appliance bench`: our server without and with
`--speculate ngram`, one after the other, a lone stream on the same prompts.

Two prompt kinds (bench/speculation_prompts.py): copying work (JSON extraction from a given
passage, a code edit, an answer that quotes its source) and free chat. Each answer runs to its
own end (EOS honoured, at most `tokens`): repetition after an ignored EOS would flatter prompt
lookup. For each server and kind: decode tokens/s (all answers' tokens after the first over
their decode time, every round), and with speculation the acceptance rate (draft tokens kept
/ checked) and tokens per speculative step, read from /health before and after the kind.
Greedy answers with and without speculation are compared text for text: they may part where
two tokens nearly tie (runtime/speculation.py says why), and the count of equal ones is shown.

    python bench/speculation.py [--engines engines] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serving import Server, free_port, http_client, sse_chunks  # noqa: E402
from speculation_prompts import COPY_PROMPTS, FREE_PROMPTS  # noqa: E402

KINDS = {"copy": COPY_PROMPTS, "free": FREE_PROMPTS}


def answer(client, url: str, model: str, prompt: str, tokens: int) -> dict:
    """One streamed greedy chat answer that ends where the model ends it (or at `tokens`)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = last = None
    usage, parts = None, []
    for data in sse_chunks(client, url, body):
        usage = data.get("usage") or usage
        for choice in data.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                last = time.perf_counter()
                first = first or last
                parts.append(text)
    if first is None or last is None or usage is None:
        raise RuntimeError(f"the answer to {prompt[:40]!r} came without text or usage")
    return {"ttft_s": first - started, "decode_s": last - first, "tokens": usage["completion_tokens"], "text": "".join(parts)}


def generator_stats(client, url: str, model: str) -> dict:
    return client.get(f"{url}/health", timeout=30).json()["generators"][model]


def measure(server: Server, tokens: int, rounds: int) -> dict:
    """Every kind's prompts, `rounds` times, against one running server."""
    figures = {}
    with http_client() as client:
        answer(client, server.url, server.model, FREE_PROMPTS[0], 8)  # warm-up
        for kind, prompts in KINDS.items():
            before = generator_stats(client, server.url, server.model)
            runs = [answer(client, server.url, server.model, prompt, tokens) for _ in range(rounds) for prompt in prompts]
            after = generator_stats(client, server.url, server.model)
            delta = {key: after[key] - before[key] for key in ("speculative_steps", "speculative_tokens", "draft_tokens", "accepted_tokens")}
            figures[kind] = {
                "decode_tok_s": sum(r["tokens"] - 1 for r in runs) / sum(r["decode_s"] for r in runs),
                "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs),
                "tokens": sum(r["tokens"] for r in runs),
                "texts": [r["text"] for r in runs[: len(prompts)]],
                "acceptance": delta["accepted_tokens"] / delta["draft_tokens"] if delta["draft_tokens"] else None,
                "tokens_per_step": delta["speculative_tokens"] / delta["speculative_steps"] if delta["speculative_steps"] else None,
                "speculative_steps": delta["speculative_steps"],
            }
    return figures


def speculation_phase(engines: Path, model: str, tokens: int = 256, rounds: int = 3, extra: tuple[str, ...] = ()) -> dict:
    """Our server without and with --speculate ngram (each started alone), the same prompts."""
    results: dict = {"tokens": tokens, "rounds": rounds}
    for label, flags in (("off", ()), ("ngram", ("--speculate", "ngram", *extra))):
        port = free_port()
        command = [sys.executable, "-m", "appliance", "serve", "--engines", str(engines), "--port", str(port), *flags]
        server = Server(f"ours speculate {label}", command, port, model)
        print(f"\n== {server.name}: copy and free prompts, one stream (log: {server.log.relative_to(ROOT)})", flush=True)
        with server:
            results[label] = measure(server, tokens, rounds)
        for kind, f in results[label].items():
            extra_text = f", acceptance {f['acceptance']:.2f}, {f['tokens_per_step']:.2f} tokens/step" if f["acceptance"] is not None else ""
            print(f"   {kind}: {f['decode_tok_s']:.1f} tok/s over {f['tokens']} tokens{extra_text}", flush=True)
    for kind in KINDS:
        off, on = results["off"][kind], results["ngram"][kind]
        results[kind] = {
            "speedup": on["decode_tok_s"] / off["decode_tok_s"],
            "same_text": [sum(a == b for a, b in zip(off.pop("texts"), on.pop("texts"))), len(KINDS[kind])],
        }
    return results


def speculation_targets(results: dict) -> list[dict]:
    """The issue's speculation targets: copying work ≥ 1.8x, free chat no loss (≥ 0.97x)."""
    rows = []
    for kind, goal, name in (("copy", 1.8, "prompt lookup on copying prompts >= 1.8x single-stream tok/s of no speculation"),
                             ("free", 0.97, "prompt lookup on free chat loses <= 3% (>= 0.97x)")):  # fmt: skip
        figures = results.get(kind)
        if not figures:
            rows.append({"target": name, "status": "N/A", "why": "the speculation phase did not run"})
            continue
        speedup = figures["speedup"]
        rows.append({"target": name, "value": speedup, "goal": goal, "unit": "ratio", "status": "PASS" if speedup >= goal else "MISS"})
    return rows


def print_speculation(results: dict) -> None:
    print(f"\nspeculative decoding (--speculate ngram), one stream, greedy, answers to their own end (at most {results['tokens']} tokens), {results['rounds']} rounds")
    for kind in KINDS:
        off, on, both = results["off"][kind], results["ngram"][kind], results[kind]
        print(
            f"  {kind:5} off {off['decode_tok_s']:6.1f} tok/s   ngram {on['decode_tok_s']:6.1f} tok/s   {both['speedup']:.2f}x   "
            f"acceptance {on['acceptance'] or 0:.2f}, {on['tokens_per_step'] or 0:.2f} tokens/step; same text as without: {both['same_text'][0]}/{both['same_text'][1]}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, default=ROOT / "engines")
    parser.add_argument("--model", default="smollm2-135m-instruct-int4")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draft-tokens", type=int, default=None)
    args = parser.parse_args()
    extra = ("--draft-tokens", str(args.draft_tokens)) if args.draft_tokens else ()
    results = speculation_phase(args.engines, args.model, args.tokens, args.rounds, extra)
    print_speculation(results)
    for row in speculation_targets(results):
        print(f"  {row['status']:5} {row['target']}: {row['value']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
