"""ONNX Runtime's own weight-only int4 quantizers on one of our fp32 engines, to compare with ours.

Reads an fp32 engine the exporter wrote (`appliance export FOLDER --precision fp32 --out DIR`)
and, for each algorithm asked for, runs onnxruntime.quantization.matmul_nbits_quantizer's
MatMulNBitsQuantizer on its graph and writes OUT_DIR/ort-<algo>/, a complete engine directory
(model.onnx with its weights in model.onnx.data, the fp32 engine's other files, manifest.json
rewritten with precision "int4"):

* default: DefaultWeightOnlyQuantConfig, round to nearest in ORT's C++ kernels;
* hqq: HQQWeightOnlyQuantConfig, half-quadratic float zero points (needs torch);
* rtn: RTNWeightOnlyQuantConfig, round to nearest (ORT's vendored neural_compressor code);
* k_quant: KQuantWeightOnlyQuantConfig, llama.cpp's k-quant scale search (same code);
* gptq: GPTQWeightOnlyQuantConfig, calibrated on prefills of export/reference_text.py's passages.

Every layer MatMul goes to MatMulNBits at 4 bits, blocks of --block-size, asymmetric (zero
points), --accuracy-level. The vocabulary projection ("lm_head", tied to the embedding in
SmolLM2: the fp32 graph reads Transpose(embedding)) is given its own [K, N] copy and quantized
to int8 blocks of --block-size, as our engines' head is, by the algorithm itself where it can
write an 8-bit MatMulNBits that ONNX Runtime runs on the CPU: default, rtn and k_quant. HQQ's
8-bit blocks have float zero points, which MatMulNBits refuses at 8 bits on the CPU, and GPTQ
writes 4-bit MatMulNBits only (at 8 bits it stores fake-quantized fp32): their head stays the
tied fp32 one unless --head-fallback default-int8 has the default quantizer round it to int8.
Two notes for reading the figures: HQQ's quantizer writes no accuracy_level, so this script sets
it on its MatMulNBits nodes afterwards; and GPTQ is calibrated on the very text quant_sweep.py
measures agreement on, which flatters it. parity.json is not copied: it describes the fp32 engine.

    python bench/ort_quantizers.py FP32_ENGINE_DIR OUT_DIR [--algos default hqq rtn k_quant gptq] [--block-size 32] [--accuracy-level 4]

Each algorithm prints its seconds, the megabytes of its projection weights (layers and head) and
whether it succeeded, then a check that the engine loads in our runtime and decodes greedily.
Then measure top-1 agreement and KL against the fp32 reference of the engine's source with

    python bench/quant_sweep.py SOURCE_FOLDER --variants --rounds 0 --engine ort-default=OUT_DIR/ort-default --engine ort-hqq=OUT_DIR/ort-hqq ...

(SOURCE_FOLDER: the folder the fp32 engine was exported from, its manifest's source.path).
Needs the export extra (onnx, onnx-ir, torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALGOS = ("default", "hqq", "rtn", "k_quant", "gptq")
HEAD = "lm_head"
HEAD_WEIGHT = "lm_head.weight_folded"  # the head's own [K, N] copy (fold_tied_head)
DATA_FILE = "model.onnx.data"


def fold_tied_head(model: Any) -> bool:
    """Give lm_head a constant [K, N] weight where it reads Transpose(embedding); True if it has one."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    head = next(n for n in graph.node if n.name == HEAD)
    if head.input[1] in inits:
        return True
    source = next((n for n in graph.node if head.input[1] in n.output), None)
    if source is None or source.op_type != "Transpose" or source.input[0] not in inits:
        return False
    weight = np.ascontiguousarray(numpy_helper.to_array(inits[source.input[0]]).T)
    graph.initializer.append(numpy_helper.from_array(weight, HEAD_WEIGHT))
    transposed = head.input[1]
    head.input[1] = HEAD_WEIGHT
    if not any(transposed in n.input for n in graph.node):
        graph.node.remove(source)
    return True


class PrefillReader:
    """GPTQ's calibration data: prefills of the reference passages into an empty KV cache."""

    def __init__(self, engine_dir: Path, chunks: int, tokens: int) -> None:
        from tokenizers import Tokenizer

        from export.reference_text import REFERENCE_PASSAGES
        from runtime.manifest import read_manifest

        manifest = read_manifest(engine_dir)
        tokenizer = Tokenizer.from_file(str(engine_dir / manifest.tokenizer_file))
        ids: list[int] = []
        for _, text in REFERENCE_PASSAGES:
            ids += tokenizer.encode(text).ids
        kv = manifest.require_kv_cache()
        # One zeroed cache, shared by every sample: copies of the reader copy it once.
        empty = np.zeros((1, kv.kv_heads, kv.max_length, kv.head_dim), dtype=np.dtype(kv.dtype))
        names = {role: manifest.require_input(role).name for role in ("token_ids", "kv_seqlens", "total_length", "logits_to_keep")}
        past = [manifest.require_input(role, layer).name for layer in range(kv.layers) for role in ("past_key", "past_value")]
        self.samples = []
        for start in range(0, min(chunks * tokens, len(ids) - tokens + 1), tokens):
            chunk = np.array(ids[start : start + tokens], dtype=np.int64)[None]
            feed = {
                names["token_ids"]: chunk,
                names["kv_seqlens"]: np.array([tokens - 1], dtype=np.int32),
                names["total_length"]: np.array(tokens, dtype=np.int32),
                names["logits_to_keep"]: np.array([1], dtype=np.int64),
            }
            self.samples.append(feed | dict.fromkeys(past, empty))
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.samples):
            return None
        self.position += 1
        return self.samples[self.position - 1]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        sample = self.get_next()
        if sample is None:
            raise StopIteration
        return sample


def quantize(algo: str, model: Any, args: argparse.Namespace, reader: PrefillReader | None) -> Any:
    """Run ORT's quantizer(s) for `algo` on `model` (changed in place where ORT does so); the quantized ModelProto."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    common = {"block_size": args.block_size, "is_symmetric": False, "accuracy_level": args.accuracy_level}

    def run(proto: Any, config: Any, exclude: tuple[str, ...] = ()) -> Any:
        quantizer = mnq.MatMulNBitsQuantizer(proto, nodes_to_exclude=list(exclude), algo_config=config, **common)
        quantizer.process()
        return quantizer.model.model

    def default(bits: int) -> Any:
        return mnq.DefaultWeightOnlyQuantConfig(args.block_size, False, args.accuracy_level, bits=bits)

    if algo in ("rtn", "k_quant"):
        cls = mnq.RTNWeightOnlyQuantConfig if algo == "rtn" else mnq.KQuantWeightOnlyQuantConfig
        # One pass: the head's own bits go in customized_weight_config.
        has_head = fold_tied_head(model)
        return run(model, cls(customized_weight_config={HEAD: {"bits": 8}} if has_head else None))
    # The others quantize the layers first, the head (tied: no constant weight yet) staying as it is.
    fallback = default(8) if args.head_fallback == "default-int8" else None
    if algo == "default":
        model, head = run(model, default(4), (HEAD,)), default(8)
    elif algo == "hqq":
        # HQQ can write 8 bits, but with float zero points, which MatMulNBits on the CPU refuses at 8 bits.
        model, head = run(model, mnq.HQQWeightOnlyQuantConfig(block_size=args.block_size, bits=4), (HEAD,)), fallback
    elif algo == "gptq":
        # GPTQ skips no node (nodes_to_exclude is RTN's only): it would quantize a constant head to 4 bits.
        # Its block_size is its lazy-update width; the group (scale block) size is the quantizer's block_size.
        model, head = run(model, mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, block_size=128)), fallback
    else:
        raise ValueError(f"unknown algorithm {algo!r}")
    # Then the head, now the only MatMul with a constant weight.
    if head is not None and fold_tied_head(model):
        model = run(model, head)
    return model


def set_accuracy_level(model: Any, level: int) -> int:
    """Give MatMulNBits nodes without an accuracy_level (HQQ writes none) `level`; how many were changed."""
    from onnx import helper

    changed = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", level))
            changed += 1
    return changed


def describe(model: Any, head_output: str) -> dict[str, Any]:
    """Projection weight bytes (layers, head) and what the head is."""
    from onnx import helper

    sizes = {t.name: _nbytes(t) for t in model.graph.initializer}
    layers = head = 0
    head_kind = "missing"
    for node in model.graph.node:
        is_head = head_output in node.output
        if node.op_type == "MatMulNBits":
            nbytes = sum(sizes.get(name, 0) for name in node.input[1:])
            if is_head:
                bits = helper.get_attribute_value(next(a for a in node.attribute if a.name == "bits"))
                zero = "symmetric"
                if len(node.input) > 3:
                    zero = "float zero points" if _is_float(model, node.input[3]) else "uint8 zero points"
                head, head_kind = nbytes, f"int{bits} MatMulNBits, {zero}"
            else:
                layers += nbytes
        elif node.op_type == "MatMul" and is_head:
            weight = node.input[1]
            source = next((n for n in model.graph.node if weight in n.output), None)
            tied = source is not None and source.op_type == "Transpose"
            head = sizes.get(source.input[0] if tied and source is not None else weight, 0)
            head_kind = "fp32 MatMul" + (" (tied: Transpose of the embedding)" if tied else "")
        elif node.op_type == "MatMul" and node.input[1] in sizes:
            layers += sizes[node.input[1]]
    return {"layer_mb": layers / 1e6, "head_mb": head / 1e6, "lm_head": head_kind}


def _nbytes(tensor: Any) -> int:
    from onnx import helper

    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _is_float(model: Any, name: str) -> bool:
    from onnx import TensorProto

    tensor = next((t for t in model.graph.initializer if t.name == name), None)
    return tensor is not None and tensor.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def write_engine(source: Path, out: Path, model: Any, algo: str, head_kind: str, args: argparse.Namespace) -> None:
    import onnx

    from runtime.manifest import MANIFEST_FILE, PARITY_FILE, read_manifest, write_manifest

    manifest = read_manifest(source)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    onnx.save_model(model, str(out / manifest.graph_file), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE)
    skip = {manifest.graph_file, MANIFEST_FILE, PARITY_FILE} | _external_files(source / manifest.graph_file)
    for path in source.iterdir():
        if path.is_file() and path.name not in skip:
            shutil.copyfile(path, out / path.name)
    options = dict(manifest.export_options)
    options.update(
        precision="int4",
        block_size=args.block_size,
        symmetric=False,
        accuracy_level=args.accuracy_level,
        lm_head_precision=head_kind.split()[0],  # int8 or fp32, as the exporter records it
        quant_method=f"onnxruntime MatMulNBitsQuantizer ({algo}); lm_head: {head_kind}",
    )
    write_manifest(out, dataclasses.replace(manifest, precision="int4", export_options=options))


def _external_files(graph_path: Path) -> set[str]:
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(graph_path), load_external_data=False)
    return {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}


def smoke_test(directory: Path, steps: int = 8) -> str:
    """Load the engine in our runtime, prefill a prompt and decode `steps` tokens greedily; the text."""
    from runtime.decoder import open_decoder
    from runtime.engine import load_engine
    from runtime.settings import RuntimeSettings

    engine = load_engine(directory, RuntimeSettings(verify_files=False))
    decoder = open_decoder(engine, slots=1)
    prompt = engine.tokenizer.encode("The printing press changed Europe because").ids
    token = int(decoder.prefill(0, prompt)[-1].argmax())
    tokens = [token]
    for _ in range(steps - 1):
        token = int(decoder.decode([0], [token])[0].argmax())
        tokens.append(token)
    if not np.isfinite(decoder.decode([0], [token])).all():
        raise RuntimeError("non-finite logits")
    return engine.tokenizer.decode(tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("engine", type=Path, help="an fp32 engine directory (appliance export ... --precision fp32)")
    parser.add_argument("out", type=Path, help="where ort-<algo>/ engine directories go")
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--accuracy-level", type=int, default=4)
    parser.add_argument("--head-fallback", choices=("fp32", "default-int8"), default="fp32", help="lm_head where the algorithm has no 8-bit (gptq)")
    parser.add_argument("--calibration-chunks", type=int, default=4, help="GPTQ: prefills of the reference passages")
    parser.add_argument("--calibration-tokens", type=int, default=256, help="GPTQ: tokens per prefill")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import onnx

    # The quantizer modules configure the root logger at INFO and log every node: keep warnings only.
    from onnxruntime.quantization import matmul_nbits_quantizer  # noqa: F401

    from runtime.manifest import read_manifest

    logging.getLogger().setLevel(logging.WARNING)
    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "neural_compressor"):
        logging.getLogger(name).setLevel(logging.WARNING)

    manifest = read_manifest(args.engine)
    if manifest.precision != "fp32":
        parser.error(f"{args.engine} is a {manifest.precision} engine; these quantizers read fp32 weights")
    graph_path = args.engine / manifest.graph_file
    head_output = next(n.output[0] for n in onnx.load(str(graph_path), load_external_data=False).graph.node if n.name == HEAD)
    results = []
    for algo in args.algos:
        row: dict[str, Any] = {"algo": algo, "dir": str(args.out / f"ort-{algo}")}
        started = time.perf_counter()
        try:
            reader = PrefillReader(args.engine, args.calibration_chunks, args.calibration_tokens) if algo == "gptq" else None
            if reader is not None:
                row["calibration"] = f"{len(reader.samples)} prefills of {args.calibration_tokens} tokens"
            model = onnx.load(str(graph_path))
            loaded = time.perf_counter()
            model = quantize(algo, model, args, reader)
            print(flush=True)  # after the vendored neural_compressor code's progress bar
            row["quantize_seconds"] = time.perf_counter() - loaded
            patched = set_accuracy_level(model, args.accuracy_level)
            if patched:
                row["accuracy_level_set_afterwards"] = patched
            row |= describe(model, head_output)
            write_engine(args.engine, Path(row["dir"]), model, algo, row["lm_head"], args)
            del model
            row["build_seconds"] = time.perf_counter() - started
            row["data_file_mb"] = (Path(row["dir"]) / DATA_FILE).stat().st_size / 1e6
            row["greedy_text"] = smoke_test(Path(row["dir"]))
            row["ok"] = True
        except Exception as exc:  # one algorithm's failure must not stop the others
            row |= {"ok": False, "error": f"{type(exc).__name__}: {exc}", "build_seconds": time.perf_counter() - started}
            traceback.print_exc()
        results.append(row)
        if row["ok"]:
            print(
                f"ort-{algo:8s} ok    {row['build_seconds']:6.1f} s (quantize {row['quantize_seconds']:.1f} s)  "
                f"layers {row['layer_mb']:.1f} MB + lm_head {row['head_mb']:.1f} MB [{row['lm_head']}]  "
                f"greedy: {row['greedy_text']!r}",
                flush=True,
            )
        else:
            print(f"ort-{algo:8s} FAILED after {row['build_seconds']:.1f} s: {row['error']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
