"""`make gpu-check`: the GPU engines proved end to end on an NVIDIA machine, in one table.

Steps, each timed and reported in the summary table:

1. the machine: which GPU (nvidia-smi), which providers this onnxruntime offers, TensorRT;
2. export the default model to an fp16 CUDA engine (`appliance export --precision fp16`),
   with its parity against PyTorch run on the GPU (on the CPU provider where there is none);
3. check the engine: every node has a CUDA kernel for its types, and the manifest agrees;
4. export it again with `--backend tensorrt` (plans built for this GPU), same parity;
5. the serving benchmark (bench/serving.py) against each engine: single stream and 8 / 32
   concurrent streams, tokens/s and time to first token.

Without an NVIDIA GPU the steps that need none (1-3) still run, so the script is exercised
up to that point everywhere, and it then stops with exit code 77 ("skipped", as automake's
test drivers read it) and a message saying what did not run. `make gpu-check` runs it in the
GPU environment (.venv-gpu, made by `make install-gpu`) on a GPU machine and in the CPU one
elsewhere.

    python bench/gpu_check.py [--out engines-gpu] [--tokens 128] [--json bench/peers/gpu-check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SKIPPED = 77  # the GPU part did not run: no GPU here
MODEL = "smollm2-135m-instruct"


def appliance(*args: str, env: dict[str, str] | None = None) -> None:
    """Run the CLI in this environment; stop the check with its error if it fails."""
    command = [sys.executable, "-m", "appliance", *args]
    print(f"$ appliance {' '.join(args)}", flush=True)
    result = subprocess.run(command, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"gpu-check: `appliance {' '.join(args)}` failed with exit code {result.returncode}")


class Table:
    """The summary: one row per step, printed at the end whatever happened."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, step: str, status: str, detail: str) -> None:
        self.rows.append((step, status, detail))
        print(f"[gpu-check] {step}: {status} {detail}", flush=True)

    def print(self) -> None:
        width = max(len(r[0]) for r in self.rows)
        print("\n== gpu-check summary")
        for step, status, detail in self.rows:
            print(f"  {step:<{width}}  {status:<7} {detail}")


def machine(table: Table) -> tuple[bool, dict]:
    import onnxruntime as ort

    from runtime.gpu import gpu_identity, nvidia_gpu_present, tensorrt_version

    gpu = gpu_identity()
    providers = ort.get_available_providers()
    facts = {
        "gpu": gpu.__dict__ if gpu else None,
        "onnxruntime": ort.__version__,
        "providers": providers,
        "tensorrt": tensorrt_version(),
        "nvidia_device": nvidia_gpu_present(),
    }
    if gpu is None:
        table.add("machine", "no GPU", f"onnxruntime {ort.__version__}, providers {', '.join(providers)}")
    else:
        table.add("machine", "GPU", f"{gpu.name} (compute {gpu.compute_capability}, {gpu.memory_mib} MiB, driver {gpu.driver}); "
                  f"onnxruntime {ort.__version__} {', '.join(providers)}; TensorRT {facts['tensorrt'] or 'not installed'}")  # fmt: skip
    return gpu is not None and "CUDAExecutionProvider" in providers, facts


def export_and_check(table: Table, name: str, out: Path, *flags: str) -> dict:
    """Export the default model with `flags`, then check its graph and report its parity."""
    from export.cuda_kernels import cuda_problems
    from runtime.manifest import read_manifest, verify_files

    started = time.monotonic()
    appliance("export", MODEL, *flags, "--out", str(out), "--force")
    seconds = time.monotonic() - started
    manifest = read_manifest(out)
    verify_files(out, manifest)
    problems = cuda_problems(out / manifest.graph_file)
    if problems:
        table.add(f"{name}: CUDA kernels", "FAIL", f"{len(problems)} node(s) without one, first: {problems[0]}")
        raise SystemExit(1)
    table.add(f"{name}: CUDA kernels", "ok", f"every node of {manifest.graph_file} has a CUDA kernel for its types")
    parity = json.loads((out / "parity.json").read_text())
    versus = parity.get("versus_fp32", {})
    detail = (
        f"on {parity['providers'][0]}: greedy identical {sum(r['greedy_identical'] for r in parity['prompts'])}/{len(parity['prompts'])} prompts, "
        f"max logit error {parity['max_rel_logit_error']:.4f} of the largest, top-1 vs the fp32 reference {versus.get('top1_agreement', float('nan')):.4f}; "
        f"export {seconds:.0f} s"
    )
    table.add(f"{name}: parity vs PyTorch", "ok", detail)
    return {"seconds": seconds, "parity": parity, "providers": list(manifest.execution_providers)}


def serving(table: Table, name: str, engines: Path, tokens: int, report: Path) -> dict:
    """bench/serving.py against one engine: single stream, then 8 and 32 streams (32 slots)."""
    env = dict(os.environ, APPLIANCE_SLOTS="32", APPLIANCE_THREADS="128")
    command = [
        sys.executable, str(ROOT / "bench" / "serving.py"), "--engines", str(engines), "--tokens", str(tokens),
        "--concurrency", "8", "32", "--skip", "llama.cpp", "in-process", "embeddings", "structured", "multi-turn", "--json", str(report),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, env=env, check=False)
    figures = json.loads(report.read_text())["systems"]["ours"] if report.is_file() else {"error": "bench/serving.py wrote no report"}
    if "error" in figures:
        table.add(f"{name}: serving", "FAIL", figures["error"])
        return figures
    single, streams = figures["single"], figures["concurrent"]
    table.add(
        f"{name}: serving",
        "ok",
        f"1 stream {single['decode_tok_s']:.0f} tok/s (TTFT {single['ttft_ms']:.0f} ms); "
        + "; ".join(f"{n} streams {r['aggregate_tok_s']:.0f} tok/s (TTFT p50 {r['ttft_p50_ms']:.0f} ms)" for n, r in streams.items()),
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "engines-gpu", help="where the GPU engines go (default: engines-gpu)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per benchmark request")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "peers" / "gpu-check.json")
    args = parser.parse_args()
    started = time.monotonic()
    table = Table()
    results: dict = {}
    try:
        has_gpu, results["machine"] = machine(table)
        appliance("pull", MODEL)
        cuda_dir = args.out / "cuda" / f"{MODEL}-fp16"
        results["fp16"] = export_and_check(table, "fp16 CUDA engine", cuda_dir, "--precision", "fp16")
        if not has_gpu:
            table.add("TensorRT engine", "skipped", "no NVIDIA GPU with onnxruntime-gpu: TensorRT builds its plans on the GPU it serves from")
            table.add("serving benchmark", "skipped", "no NVIDIA GPU: nothing to measure the GPU engines on")
            table.print()
            print("\ngpu-check: no NVIDIA GPU (or no onnxruntime-gpu: make install-gpu) on this machine; the export and graph checks ran, "
                  "the TensorRT export, GPU parity and the serving benchmark did not", file=sys.stderr)  # fmt: skip
            return SKIPPED
        trt_dir = args.out / "tensorrt" / f"{MODEL}-fp16-trt"
        results["tensorrt"] = export_and_check(table, "TensorRT engine", trt_dir, "--precision", "fp16", "--backend", "tensorrt")
        results["serving_cuda"] = serving(table, "fp16 CUDA engine", cuda_dir.parent, args.tokens, args.json.with_name("gpu-serving-cuda.json"))
        results["serving_tensorrt"] = serving(table, "TensorRT engine", trt_dir.parent, args.tokens, args.json.with_name("gpu-serving-trt.json"))
        table.print()
        failed = [row for row in table.rows if row[1] == "FAIL"]
        return 1 if failed else 0
    finally:
        results["seconds"] = time.monotonic() - started
        results["table"] = table.rows
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"gpu-check: {results['seconds']:.0f} s; figures in {args.json}")


if __name__ == "__main__":
    raise SystemExit(main())
