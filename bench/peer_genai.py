"""onnxruntime-genai's own generator, timed the way bench/runtime_vs_peers.py times ours.

Runs inside the peer environment that `make bench-peers` builds (onnxruntime-genai is kept
out of the appliance's own environment). It reads one JSON request per line on stdin,
{"ids": [...], "new_tokens": N}, and answers one JSON line per request:
{"ttft_s", "decode_s", "tokens"}. Greedy, exactly N tokens (EOS masked by min_length).

    python bench/peer_genai.py MODEL_DIR --threads 2

Timing: `append_tokens` runs the prompt (prefill); the first `generate_next_token` picks the
first token from those logits, so time to first token ends there. Every later
`generate_next_token` runs one decode step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import onnxruntime_genai as og


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    config = og.Config(args.model)
    if args.threads:
        # The model builder writes no thread count into genai_config.json; overlay one.
        options = {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)
    print(json.dumps({"ready": True, "version": og.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        ids, new = [int(i) for i in request["ids"]], int(request["new_tokens"])
        params = og.GeneratorParams(model)
        # max_length and min_length count the prompt too; equal, they force exactly `new` tokens.
        total = len(ids) + new
        params.set_search_options(do_sample=False, top_k=1, num_beams=1, max_length=total, min_length=total, batch_size=1)
        generator = og.Generator(model, params)
        started = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        tokens = [int(generator.get_next_tokens()[0])]
        first = time.perf_counter()
        while len(tokens) < new and not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        done = time.perf_counter()
        del generator
        print(json.dumps({"ttft_s": first - started, "decode_s": done - first, "tokens": tokens}), flush=True)


if __name__ == "__main__":
    main()
