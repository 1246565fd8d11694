"""Which weight quantization to ship: agreement with the fp32 reference against decode speed.

Opens a model once, builds its fp32 engine once (the speed baseline), then builds every
variant asked for (bits, block size, symmetric or not, accuracy level, lm_head precision)
and measures:

* top-1 agreement and mean KL with the layer-streamed fp32 reference, teacher-forced over the
  reference text (export/parity.py's `compare_quantized`, the figure parity.json records);
* bytes of projection weights a decode step reads;
* bare decode tokens/s at batch 1 and 8 (runtime decoder, no sampling or HTTP), interleaved
  with the fp32 engine's so that noise hits every variant alike.

    python bench/quant_sweep.py [SOURCE] [--variants int4:32:asym:4:int8 ...] [--json out.json]

A variant is bits:block:sym|asym:accuracy_level:lm_head[:method], the method one of
export/quantize.py's METHODS (rtn when left out; source-blocks, hqq, mse). Each row also
records the seconds the variant's graph took to build (reading, quantizing and writing the
weights). docs/performance.md and docs/exporting.md ("Int4 quantizers for folder sources")
hold runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.quantize import WeightQuantization

DEFAULT_VARIANTS = (
    "int4:32:sym:4:int8:source-blocks",
    "int4:32:sym:1:int8:source-blocks",
    "int4:32:asym:4:int8",
    "int4:32:asym:4:int8:mse",
    "int4:32:asym:4:int8:hqq",
    "int4:32:asym:1:int8",
    "int4:32:asym:4:fp32",
    "int4:16:asym:4:int8",
    "int4:32:sym:4:int8",
    "int8:32:asym:4:int8",
    "int8:32:asym:1:int8",
    "int8:32:sym:4:int8",
    "int8:128:asym:4:int8",
)


def parse_variant(text: str) -> WeightQuantization:
    bits, block, sym, level, head, *method = text.split(":")
    quant = WeightQuantization(int(bits.removeprefix("int")), int(block), sym == "sym", int(level), head, *method)
    quant.check()
    return quant


def build(opened, reference_manifest, quant: WeightQuantization | None, out: Path, max_context: int):
    from export import gqa_builder
    from runtime.manifest import TOKENIZER_FILE, read_manifest, write_manifest

    out.mkdir(parents=True)
    built = gqa_builder.build_gqa_graph(opened.config, opened.tensors, max_context, out, quant)
    shutil.copyfile(reference_manifest.parent / TOKENIZER_FILE, out / TOKENIZER_FILE)
    manifest = dataclasses.replace(
        read_manifest(reference_manifest.parent), inputs=built.inputs, outputs=built.outputs, precision="fp32" if quant is None else f"int{quant.bits}"
    )
    write_manifest(out, manifest)
    return built


def decode_rate(directory: Path, batch: int, steps: int = 48) -> float:
    from runtime.decoder import open_decoder
    from runtime.engine import load_engine
    from runtime.settings import RuntimeSettings

    decoder = open_decoder(load_engine(directory, RuntimeSettings(verify_files=False)), slots=batch)
    slots = list(range(batch))
    prompt = list(range(100, 140))
    tokens = [int(decoder.prefill(s, prompt)[-1].argmax()) for s in slots]
    decoder.decode(slots, tokens)
    started = time.perf_counter()
    for _ in range(steps):
        tokens = decoder.decode(slots, tokens).argmax(axis=1)
    return batch * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", default="smollm2-135m-instruct")
    parser.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds (0: agreement only)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--engine", action="append", default=[], metavar="NAME=DIR",
        help="also measure an engine quantized elsewhere (e.g. by onnxruntime's MatMulNBitsQuantizer from the fp32 graph); it must read the same source",
    )  # fmt: skip
    args = parser.parse_args()

    from export.loading import open_decoder_source, read_decoder_config
    from export.options import ExportOptions
    from export.parity import compare_quantized, run_engine
    from export.pipeline import export_model
    from export.reference import StreamedReference
    from export.sources import resolve_source

    source = resolve_source(args.source, None)
    opened = open_decoder_source(source, read_decoder_config(source))
    reference = StreamedReference(opened.skeleton, opened.tensors)  # the fp32 reference, computed once
    work = Path(tempfile.mkdtemp(prefix="quant-sweep-"))
    try:
        # The fp32 engine (the speed baseline), with the manifest and tokenizer the exporter makes; variants copy both.
        fp32 = work / "fp32"
        export_model(args.source, fp32, ExportOptions(parity_tokens=4))
        rows = [{"variant": "fp32", "top1_agreement": 1.0, "mean_kl": 0.0, "dir": fp32}]

        def measure(label: str, directory: Path, **extra) -> None:
            scratch = work / f"{directory.name}.logits"
            scratch.mkdir()
            run = run_engine(directory, opened.tokenizer, scratch, prompts=(), passages=True)
            if not reference.hidden:
                reference.run(run.sequences())
            parity = compare_quantized(run, reference)
            shutil.rmtree(scratch)
            rows.append(
                {
                    "variant": label,
                    "top1_agreement": parity["top1_agreement"],
                    "mean_kl": parity["mean_kl"],
                    "engine_perplexity": parity["engine_perplexity"],
                    "fp32_perplexity": parity["fp32_perplexity"],
                    **extra,
                    "dir": directory,
                }
            )
            mb, seconds = extra.get("matmul_weight_mb"), extra.get("build_seconds")
            print(f"{label:24s} top1 {parity['top1_agreement']:.4f}  KL {parity['mean_kl']:.4f}  "
                  f"ppl {parity['engine_perplexity']:.2f} (fp32 {parity['fp32_perplexity']:.2f})"
                  + (f"  {mb:.0f} MB  built in {seconds:.1f} s" if mb is not None else ""), flush=True)  # fmt: skip

        for text in args.variants:
            quant = parse_variant(text)
            directory = work / text.replace(":", "-")
            started = time.perf_counter()
            built = build(opened, fp32 / "manifest.json", quant, directory, args.max_context)
            measure(text, directory, matmul_weight_mb=built.matmul_weight_bytes / 1e6, build_seconds=time.perf_counter() - started)
        for spec in args.engine:
            label, _, path = spec.partition("=")
            measure(label, Path(path))
        rates: dict[str, dict[int, list[float]]] = {r["variant"]: {1: [], 8: []} for r in rows}
        for _ in range(args.rounds):
            for row in rows:
                for batch in (1, 8):
                    rates[row["variant"]][batch].append(decode_rate(row["dir"], batch))
        print(f"\n{'variant':24s} {'top1':>7s} {'KL':>7s} {'MB':>6s} {'tok/s b1':>9s} {'tok/s b8':>9s} {'build s':>8s}")
        for row in rows:
            row.pop("dir")
            for batch in (1, 8):
                row[f"decode_tok_s_batch{batch}"] = float(np.median(rates[row["variant"]][batch])) if args.rounds else None
            mb = row.get("matmul_weight_mb", 0)
            b1, b8 = row["decode_tok_s_batch1"] or 0, row["decode_tok_s_batch8"] or 0
            print(f"{row['variant']:24s} {row['top1_agreement']:7.4f} {row['mean_kl']:7.4f} {mb:6.0f} {b1:9.1f} {b8:9.1f} {row.get('build_seconds', 0):8.1f}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
