"""What a speculative verification run costs against a decode step, in-process.

A decode step of a lone sequence (padded to two rows, the batch-invariant default) against
prefill runs of S positions keeping every position's logits (what `--speculate` runs), on a
300-token context, interleaved, median of 40 each.

    python bench/verify_cost.py engines/smollm2-135m-instruct-int4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.decoder import open_decoder  # noqa: E402
from runtime.engine import load_engine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("engine", type=Path)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    decoder = open_decoder(load_engine(args.engine), slots=4, batch_invariant=True)
    decoder.prefill(0, list(range(100, 400)))
    context = decoder.length(0)

    def run(size: int) -> None:
        if size == 0:
            decoder.decode([0], [5])
        else:
            decoder.prefill(0, list(range(7, 7 + size)), logits_to_keep=size)
        decoder.truncate(0, context)

    sizes = [0, 2, 3, 4, 5, 6, 7, 8, 9]
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for size in sizes:
        run(size)  # each shape's first run plans its memory
    for _ in range(args.rounds):
        for size in sizes:
            started = time.perf_counter()
            run(size)
            times[size].append(time.perf_counter() - started)
    step = statistics.median(times[0])
    for size in sizes:
        label = "padded decode step" if size == 0 else f"run of {size} positions"
        print(f"{label:22} {1000 * statistics.median(times[size]):7.2f} ms  {statistics.median(times[size]) / step:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
