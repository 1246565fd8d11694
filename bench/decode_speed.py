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
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.decoder import open_decoder
from runtime.engine import load_engine
from runtime.settings import RuntimeSettings


def read_bandwidth_gbs(megabytes: int = 1024, repeats: int = 7) -> float:
    """Best-of-N read bandwidth (GB/s) of a matrix-vector product over a 1 GiB float32 matrix.

    A batch-1 decode step is a chain of matrix-vector products that read every weight
    once, so this (BLAS, all cores) is the closest cheap probe of the rate a decode step can
    stream weights at; a plain numpy sum reads markedly slower on our machines.
    """
    matrix = np.ones((megabytes * (1 << 20) // 4096, 1024), dtype=np.float32)
    vector = np.ones(1024, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matrix @ vector
        best = min(best, time.perf_counter() - started)
    return matrix.nbytes / best / 1e9


def weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("model.onnx"))


def decode_rates(engine, batch: int, prompt: list[int], steps: int, repeats: int) -> list[float]:
    """Aggregate decode tokens/s, `repeats` times, with `batch` sequences advanced together each step."""
    decoder = open_decoder(engine, slots=batch)
    slots = list(range(batch))
    rates = []
    for _ in range(repeats):
        for slot in slots:
            decoder.reset(slot)
        tokens = [int(decoder.prefill(slot, prompt)[-1].argmax()) for slot in slots]
        decoder.decode(slots, tokens)  # warm-up step
        started = time.perf_counter()
        for _ in range(steps):
            tokens = decoder.decode(slots, tokens).argmax(axis=1)
        rates.append(batch * steps / (time.perf_counter() - started))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps per measurement")
    parser.add_argument("--batches", default="1,4,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per batch size (the median is reported)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    # Bandwidth first, while no ONNX Runtime thread pool spins on the cores.
    bandwidth = read_bandwidth_gbs()
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
    spread = {}
    for batch in (int(b) for b in args.batches.split(",")):
        rates = decode_rates(engine, batch, prompt, args.steps, args.repeats)
        results["decode_tok_s"][batch] = round(float(np.median(rates)), 1)
        spread[batch] = (min(rates), max(rates))

    print(f"engine {results['engine']}: {weights / 1e6:.0f} MB of weights, threads={args.threads or 'auto'}")
    print(f"memory read bandwidth (BLAS matrix-vector) {bandwidth:.1f} GB/s -> batch-1 decode ceiling {results['batch1_ceiling_tok_s']} tok/s")
    print(f"prefill (512 tokens): {prefill:.0f} tok/s")
    for batch, rate in results["decode_tok_s"].items():
        share = f" ({rate / results['batch1_ceiling_tok_s']:.0%} of the ceiling)" if batch == 1 else ""
        low, high = spread[batch]
        print(f"decode, batch {batch:>2}: {rate:7.1f} tok/s aggregate (median of {args.repeats}, {low:.0f}-{high:.0f}){share}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
