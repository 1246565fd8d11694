"""Single-stream decode speed of our runtime next to onnxruntime-genai and optimum, in one run.

All three run the same model (our engine's source: the embedded GGUF, de-quantised to fp32
once into a Hugging Face folder that the peers export from), the same prompt token ids,
greedy, exactly N new tokens (EOS suppressed), the same number of ONNX Runtime threads, in
interleaved rounds so that the machine's drift spreads evenly. Each system is timed the
same way: time to first token (prompt evaluation + first choice), then decode tokens/s
over the remaining N-1 tokens.

* ours: runtime.generation.TextGenerator, the full decode loop (sampling, incremental
  detokenizing, events), not a bare graph step;
* onnxruntime-genai: its own Generator on a model its own builder made (fp32, CPU), run in
  the peer environment `make bench-peers` builds (bench/peer_genai.py);
* optimum: ORTModelForCausalLM.generate on optimum's own export, as its users run it.

    python bench/runtime_vs_peers.py engines/smollm2-135m-instruct-fp32 [--tokens 128 --rounds 3 --json out.json]

Peers that are not installed are reported as skipped, with what to run to get them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.engine import load_engine  # noqa: E402
from runtime.events import Delta  # noqa: E402
from runtime.generation import TextGenerator  # noqa: E402
from runtime.request import GenerationRequest  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from runtime.settings import RuntimeSettings  # noqa: E402

PEERS = ROOT / "bench" / "peers"
GENAI_PYTHON = PEERS / "genai-venv" / "bin" / "python"
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain briefly why the sky is blue during the day.",
    "List five unusual uses for a paperclip and say why each works.",
)


class System(Protocol):
    name: str

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        """(time to first token s, decode time of the remaining tokens s, token ids)."""


class Ours:
    name = "ours (runtime)"

    def __init__(self, engine_dir: Path, threads: int) -> None:
        self.generator = TextGenerator(load_engine(engine_dir, RuntimeSettings(intra_op_threads=threads)))

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        request = GenerationRequest(tuple(ids), SamplingParams(temperature=0), max_tokens=new_tokens, ignore_eos=True)
        tokens: list[int] = []
        started = time.perf_counter()
        first = None
        for event in self.generator.generate(request):
            if isinstance(event, Delta):
                tokens.extend(event.token_ids)
                first = first or time.perf_counter()
        done = time.perf_counter()
        return first - started, done - first, tokens


class Genai:
    name = "onnxruntime-genai"

    def __init__(self, model_dir: Path, threads: int) -> None:
        self.process = subprocess.Popen(
            [str(GENAI_PYTHON), str(ROOT / "bench" / "peer_genai.py"), str(model_dir), "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = json.loads(self.process.stdout.readline())
        self.name = f"onnxruntime-genai {hello['version']}"

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        self.process.stdin.write(json.dumps({"ids": ids, "new_tokens": new_tokens}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return answer["ttft_s"], answer["decode_s"], answer["tokens"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


class Optimum:
    def __init__(self, model_dir: Path, threads: int) -> None:
        from importlib import metadata

        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.model = ORTModelForCausalLM.from_pretrained(str(model_dir), session_options=options)
        self.name = f"optimum-onnx {metadata.version('optimum-onnx')} ORTModelForCausalLM"

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            """generate() hands the streamer the prompt first, then each new token."""

            def __init__(self) -> None:
                self.puts, self.first = 0, None

            def put(self, value) -> None:
                self.puts += 1
                if self.puts == 2:
                    self.first = time.perf_counter()

            def end(self) -> None:
                pass

        clock = Clock()
        inputs = torch.tensor([ids])
        started = time.perf_counter()
        out = self.model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=0,
        )
        done = time.perf_counter()
        return clock.first - started, done - clock.first, [int(t) for t in out[0, len(ids) :]]


class Transformers:
    """Hugging Face transformers in PyTorch (fp32, CPU), generate() as its users run it."""

    def __init__(self, hf: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, __version__

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32).eval()
        self.name = f"transformers {__version__} PyTorch {torch.__version__}"

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        import torch

        with torch.inference_mode():
            return Optimum.run(self, ids, new_tokens)  # the same generate() call and streamer clock


# -- peer preparation (cached under bench/peers/, outside git) ---------------------------


def hf_folder(source: str) -> Path:
    """The engine's source as an fp32 Hugging Face folder, the input both peers export from."""
    folder = PEERS / f"{source}-hf"
    if (folder / "config.json").is_file():
        return folder
    from export.loading import load_decoder
    from export.sources import resolve_source

    print(f"writing {folder} (the source de-quantised to fp32) ...", flush=True)
    loaded = load_decoder(resolve_source(source))
    partial = folder.with_name(folder.name + ".partial")
    loaded.model.save_pretrained(partial)
    loaded.tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def optimum_export(hf: Path) -> Path:
    out = PEERS / f"{hf.name.removesuffix('-hf')}-optimum"
    if not (out / "model.onnx").is_file():
        import warnings

        from optimum.onnxruntime import ORTModelForCausalLM

        from export.loading import quiet_libraries

        print(f"exporting {out} with optimum ...", flush=True)
        quiet_libraries()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about its own graph
            ORTModelForCausalLM.from_pretrained(str(hf), export=True).save_pretrained(str(out))
    return out


def genai_build(hf: Path, precision: str = "fp32") -> Path:
    """onnxruntime-genai's own model of the source (its builder's int4 is its default RTN, block 32)."""
    out = PEERS / f"{hf.name.removesuffix('-hf')}-genai-{precision}"
    if not (out / "genai_config.json").is_file():
        print(f"building {out} with onnxruntime-genai's model builder ...", flush=True)
        command = [str(GENAI_PYTHON), "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(PEERS / "genai-cache")]
        built = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"onnxruntime-genai's builder failed ({' '.join(command)}):\n{built.stderr[-3000:]}")
    return out


# -- the run --------------------------------------------------------------------------


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--source", default="smollm2-135m-instruct", help="the engine's source (a default model name)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all prompts (this machine's speed drifts)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads for every system")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    PEERS.mkdir(parents=True, exist_ok=True)

    ours = Ours(args.engine, args.threads)
    prompts = [ours.generator.chat_prompt_ids([{"role": "user", "content": text}]) for text in PROMPTS]
    systems: list = [ours]
    skipped = {}
    hf = hf_folder(args.source)
    if GENAI_PYTHON.exists():
        systems.append(Genai(genai_build(hf), args.threads))
    else:
        skipped["onnxruntime-genai"] = "not installed: run `make bench-peers`"
    try:
        systems.append(Optimum(optimum_export(hf), args.threads))
    except ImportError as exc:
        skipped["optimum"] = f"not installed ({exc}): install the export extra (`make install`)"

    for system in systems:  # warm-up: first runs pay for allocations and page faults
        system.run(prompts[0], 8)
    samples: dict[str, list[tuple[float, float]]] = {s.name: [] for s in systems}
    tokens: dict[str, list[list[int]]] = {s.name: [[] for _ in prompts] for s in systems}
    for round_ in range(args.rounds):
        order = systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
        for index, ids in enumerate(prompts):
            for system in order:
                ttft, decode, out = system.run(ids, args.tokens)
                samples[system.name].append((ttft, decode))
                tokens[system.name][index] = out
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    for system in systems:
        if isinstance(system, Genai):
            system.close()

    results = {"tokens": args.tokens, "rounds": args.rounds, "threads": args.threads, "prompt_tokens": [len(p) for p in prompts], "systems": {}, "skipped": skipped}
    for system in systems:
        runs = samples[system.name]
        results["systems"][system.name] = {
            "ttft_ms": round(1000 * statistics.median(t for t, _ in runs), 1),
            "decode_tok_s": round(statistics.median((args.tokens - 1) / d for _, d in runs), 1),
            "decode_tok_s_range": [round(min((args.tokens - 1) / d for _, d in runs), 1), round(max((args.tokens - 1) / d for _, d in runs), 1)],
            "greedy_first_difference_from_ours": [first_difference(tokens[ours.name][i], tokens[system.name][i]) for i in range(len(prompts))],
        }
    mine = results["systems"][ours.name]
    print(f"\nsingle stream, greedy, {args.tokens} new tokens, {len(prompts)} prompts x {args.rounds} rounds, {args.threads} threads (medians)")
    print(f"{'system':38} {'TTFT ms':>8} {'decode tok/s':>13} {'ours/peer decode':>17} {'peer/ours TTFT':>15}  greedy tokens vs ours")
    for name, figures in results["systems"].items():
        ratio = mine["decode_tok_s"] / figures["decode_tok_s"]
        ttft_ratio = figures["ttft_ms"] / mine["ttft_ms"]
        same = figures["greedy_first_difference_from_ours"]
        agreement = "identical" if all(d is None for d in same) else f"first difference at {same}"
        low, high = figures["decode_tok_s_range"]
        print(f"{name:38} {figures['ttft_ms']:8.1f} {figures['decode_tok_s']:8.1f} ({low:.0f}-{high:.0f}) {ratio:12.2f}x {ttft_ratio:14.2f}x  {agreement}")
        figures["ours_over_peer_decode"] = round(ratio, 3)
    for name, why in skipped.items():
        print(f"{name:38} skipped: {why}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
