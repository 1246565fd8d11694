"""The speculative-decoding phase of `appliance bench`: our server without and with
`--speculate ngram`, a lone stream on the same prompts; with the GGUF our default engine comes
from, llama.cpp's server without and with its own n-gram speculation (`--spec-type
ngram-simple`) beside them.

Two prompt kinds (bench/speculation_prompts.py): copying work (JSON extraction from a given
passage, a code edit, an answer that quotes its source) and free chat. Both servers are up at
once and every prompt goes to one, then the other (an idle server waits on a condition), so
drift in the machine's speed hits both alike. Each answer runs to its own end (EOS honoured,
at most `tokens`): repetition after an ignored EOS would flatter prompt lookup. For each
server and kind: decode tokens/s (all answers' tokens after the first over their decode time,
every round), and with speculation the acceptance rate (draft tokens kept / checked) and
tokens per speculative step, read from /health around each answer.
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


def speculation_phase(engines: Path, model: str, tokens: int = 256, rounds: int = 3, extra: tuple[str, ...] = (), gguf: Path | None = None, threads: int = 2) -> dict:
    """Our server without and with --speculate ngram (and, given `gguf` and a built llama-server,
    llama.cpp without and with its own n-gram speculation on that file), all up, asked in turn:
    each prompt goes to one server after the other, so the machine's drift over the phase (±15%
    here) hits them alike."""
    from contextlib import ExitStack

    from serving import LLAMA_SERVER

    commands: dict[str, list[str]] = {}
    for label, flags in (("off", ()), ("ngram", ("--speculate", "ngram", *extra))):
        commands[label] = [sys.executable, "-m", "appliance", "serve", "--engines", str(engines), "--port", "{port}", *flags]
    if gguf is not None and LLAMA_SERVER.exists():
        llama = [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", "{port}", "-np", "8", "-c", str(8 * 2048), "-t", str(threads), "--no-webui"]
        commands["llama.cpp"] = llama
        commands["llama.cpp ngram"] = [*llama, "--spec-type", "ngram-simple"]  # its prompt lookup, its default draft lengths
    servers = {}
    with ExitStack() as stack:
        for label, command in commands.items():
            port = free_port()
            command = [part.replace("{port}", str(port)) for part in command]
            servers[label] = stack.enter_context(Server(f"speculation phase {label}", command, port, model))
        print(f"\n== speculation: {', '.join(servers)}, asked in turn (logs: bench/peers/logs/speculation-phase-*.log)", flush=True)
        runs: dict = {label: {kind: [] for kind in KINDS} for label in servers}
        counts = {kind: dict.fromkeys(("speculative_steps", "speculative_tokens", "draft_tokens", "accepted_tokens"), 0) for kind in KINDS}
        with http_client() as client:
            for server in servers.values():
                answer(client, server.url, model, FREE_PROMPTS[0], 8)  # warm-up
            for _ in range(rounds):
                for kind, prompts in KINDS.items():
                    for prompt in prompts:
                        for label, server in servers.items():
                            before = generator_stats(client, server.url, model) if label == "ngram" else None
                            runs[label][kind].append(answer(client, server.url, model, prompt, tokens))
                            if before is not None:
                                after = generator_stats(client, server.url, model)
                                for key in counts[kind]:
                                    counts[kind][key] += after[key] - before[key]
    results: dict = {"tokens": tokens, "rounds": rounds, "systems": list(servers)}
    for label in servers:
        results[label] = {}
        for kind, done in runs[label].items():
            figures = {
                "decode_tok_s": sum(r["tokens"] - 1 for r in done) / sum(r["decode_s"] for r in done),
                "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in done),
                "tokens": sum(r["tokens"] for r in done),
            }
            if label == "ngram":
                c = counts[kind]
                figures["acceptance"] = c["accepted_tokens"] / c["draft_tokens"] if c["draft_tokens"] else None
                figures["tokens_per_step"] = c["speculative_tokens"] / c["speculative_steps"] if c["speculative_steps"] else None
            results[label][kind] = figures
    for kind, prompts in KINDS.items():
        off, on = runs["off"][kind][: len(prompts)], runs["ngram"][kind][: len(prompts)]
        rate = {label: results[label][kind]["decode_tok_s"] for label in servers}
        results[kind] = {
            "speedup": rate["ngram"] / rate["off"],
            "same_text": [sum(a["text"] == b["text"] for a, b in zip(off, on)), len(prompts)],
        }
        if "llama.cpp" in rate:
            results[kind] |= {
                "ngram_vs_llama": rate["ngram"] / rate["llama.cpp"],
                "ngram_vs_llama_ngram": rate["ngram"] / rate["llama.cpp ngram"],
                "llama_speedup": rate["llama.cpp ngram"] / rate["llama.cpp"],
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
    print(f"\nspeculative decoding, one stream, greedy, answers to their own end (at most {results['tokens']} tokens), {results['rounds']} rounds, servers asked in turn")
    for kind in KINDS:
        rates = "   ".join(f"{label} {results[label][kind]['decode_tok_s']:.1f}" for label in results["systems"])
        on, both = results["ngram"][kind], results[kind]
        print(f"  {kind:5} tok/s: {rates}")
        line = (
            f"        ours ngram / off {both['speedup']:.2f}x, acceptance {on['acceptance'] or 0:.2f}, {on['tokens_per_step'] or 0:.2f} tokens/step; "
            f"same text as without: {both['same_text'][0]}/{both['same_text'][1]}"
        )
        if "ngram_vs_llama" in both:
            line += f"; ours ngram / llama.cpp {both['ngram_vs_llama']:.2f}x, / llama.cpp ngram {both['ngram_vs_llama_ngram']:.2f}x (its own ngram / plain {both['llama_speedup']:.2f}x)"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, default=ROOT / "engines")
    parser.add_argument("--model", default="smollm2-135m-instruct-int4")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draft-tokens", type=int, default=None)
    parser.add_argument("--gguf", type=Path, default=None, help="also llama.cpp without and with --spec-type ngram-simple on this GGUF (the default engine's source)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    extra = ("--draft-tokens", str(args.draft_tokens)) if args.draft_tokens else ()
    results = speculation_phase(args.engines, args.model, args.tokens, args.rounds, extra, args.gguf, args.threads)
    print_speculation(results)
    for row in speculation_targets(results):
        print(f"  {row['status']:5} {row['target']}: {row['value']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
