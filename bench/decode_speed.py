"""How fast an exported decoder engine runs, next to what memory bandwidth allows.

Runs the runtime's bare decode step (no sampling, no text, no HTTP) on an engine
directory: prefill throughput on a long prompt, then greedy decode tokens/s at batch 1
and aggregate tokens/s with several sequences per step. It also measures this machine's
memory read bandwidth with numpy and prints the batch-1 ceiling it implies
(bandwidth / bytes of weights read per token), so a figure can be judged against the
hardware rather than against a guess.

    python bench/decode_speed.py engines/smollm2-135m-instruct-fp32 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.decoder import open_decoder  # noqa: E402
from runtime.engine import load_engine  # noqa: E402
from runtime.settings import RuntimeSettings  # noqa: E402


def read_bandwidth_gbs(threads: int, megabytes: int = 1024, repeats: int = 5) -> float:
    """Best-of-N read bandwidth (GB/s) of `threads` threads each summing a slice of a large array.

    numpy's reductions release the GIL, so the threads read memory in parallel, as ONNX
    Runtime's intra-op threads do during a decode step.
    """
    data = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=part.sum) for part in parts]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("model.onnx"))


def decode_rate(engine, batch: int, prompt: list[int], steps: int) -> float:
    """Aggregate decode tokens/s with `batch` sequences advanced together each step."""
    decoder = open_decoder(engine, slots=batch)
    tokens = [int(decoder.prefill(slot, prompt)[-1].argmax()) for slot in range(batch)]
    slots = list(range(batch))
    decoder.decode(slots, tokens)  # warm-up step
    started = time.perf_counter()
    for _ in range(steps):
        tokens = decoder.decode(slots, tokens).argmax(axis=1)
    return batch * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps per measurement")
    parser.add_argument("--batches", default="1,4,8", help="comma-separated batch sizes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    # Bandwidth first, while no ONNX Runtime thread pool spins on the cores.
    threads = args.threads or os.cpu_count() or 1
    bandwidth = read_bandwidth_gbs(threads)
    engine = load_engine(args.engine, RuntimeSettings(intra_op_threads=args.threads))
    prompt = engine.tokenizer.encode("Write a short story about a lighthouse keeper who finds a message in a bottle. " * 3).ids
    long_prompt = (prompt * 20)[:512]

    decoder = open_decoder(engine, slots=1)
    decoder.prefill(0, long_prompt[:32])  # warm-up
    decoder.reset(0)
    started = time.perf_counter()
    decoder.prefill(0, long_prompt)
    prefill = len(long_prompt) / (time.perf_counter() - started)

    weights = weight_bytes(args.engine)
    results = {
        "engine": engine.name,
        "threads": args.threads,
        "weight_bytes": weights,
        "read_bandwidth_gbs": round(bandwidth, 1),
        "batch1_ceiling_tok_s": round(bandwidth * 1e9 / weights, 1),
        "prefill_512_tok_s": round(prefill, 1),
        "decode_tok_s": {},
    }
    for batch in (int(b) for b in args.batches.split(",")):
        results["decode_tok_s"][batch] = round(decode_rate(engine, batch, prompt, args.steps), 1)

    print(f"engine {results['engine']}: {weights / 1e6:.0f} MB of weights, threads={args.threads or 'auto'}")
    print(f"memory read bandwidth ({threads} threads) {bandwidth:.1f} GB/s -> batch-1 decode ceiling {results['batch1_ceiling_tok_s']} tok/s")
    print(f"prefill (512 tokens): {prefill:.0f} tok/s")
    for batch, rate in results["decode_tok_s"].items():
        share = f" ({rate / results['batch1_ceiling_tok_s']:.0%} of the ceiling)" if batch == 1 else ""
        print(f"decode, batch {batch:>2}: {rate:7.1f} tok/s aggregate{share}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
