"""`appliance export`: model source → engine directory, validated, written atomically.

The steps, each reported by `Progress`:

1. check the arguments and the source (cheap, before any heavy import), then the config and
   the memory and disk the export will need (export/budget.py), before any weight is read;
2. open the source: tokenizer, special tokens and a tensor source (export/tensors.py), no weights;
3. build the graph: our GroupQueryAttention builder, a tensor at a time from the tensor source,
   when it covers the architecture; optimum's exporter otherwise (decoders, the model loaded
   whole); optimum's feature-extraction export (encoders); optimum's text-classification export
   (cross-encoders, which become rerank engines: export/cross_encoder.py);
4. write tokenizer.json and manifest.json;
5. validate against the PyTorch model (decoders: a layer-streamed fp32 reference, run after the
   engine is closed) and write parity.json; an fp32 decoder whose greedy tokens differ, or an
   encoder below cosine 0.9999, or a reranker whose scores differ from CrossEncoder.predict's, fails the export;
6. rewrite the manifest with the final sha256 of every file and move the directory into
   place. Everything happens in a hidden sibling folder that is deleted on any failure, so
   the output path either holds a complete engine or nothing new.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export import budget
from export.errors import ExportError, ParityError, UnsupportedModelError
from export.options import ExportOptions, ExportResult, check_backend, default_output
from export.progress import Progress, Silent
from export.sources import ModelSource, resolve_source
from export.staging import check_destination, move_into_place, remove_stale_staging
from export.tensorrt_plans import build_tensorrt_plans, tensorrt_spec
from runtime.gpu import nvidia_gpu_present
from runtime.manifest import (
    PARITY_FILE,
    STYLE_CONCAT_KV,
    STYLE_ENCODER,
    STYLE_GQA_SHARED_KV,
    TASK_EMBEDDING,
    TASK_RERANK,
    TASK_TEXT_GENERATION,
    TOKENIZER_FILE,
    EmbeddingSpec,
    Manifest,
    write_manifest,
)
from runtime.session import CPU
from runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from export.gqa_builder import BuiltGraph
    from export.optimum_export import OptimumGraph
    from export.reference import Reference



DEFAULT_OPTIONS = ExportOptions()


def export_model(
    source_argument: str,
    out: Path | str | None = None,
    options: ExportOptions = DEFAULT_OPTIONS,
    *,
    cache_dir: Path | str | None = None,
    pip_args: Sequence[str] = (),
    progress: Progress | None = None,
) -> ExportResult:
    """Export `source_argument` (default name, HF folder or .gguf) into an engine directory."""
    progress = progress or Silent()
    started = time.monotonic()
    options.check()
    check_backend(options.backend)
    if out is not None:
        check_destination(Path(out), options)  # before any download
    source = resolve_source(source_argument, cache_dir, progress=progress, pip_args=pip_args)
    target = Path(out) if out is not None else default_output(source, options)
    check_destination(target, options)
    kind = {TASK_EMBEDDING: "an embedding model", TASK_RERANK: "a reranker (cross-encoder)"}.get(source.task)
    if kind and options.builder == "gqa":
        raise UnsupportedModelError(f"--builder gqa builds decoders; {source.name} is {kind} (use --builder auto)")
    if kind and (options.target_device == "cuda" or options.precision == "fp16"):
        precisions = "fp32, int8 or int4" if source.task == TASK_EMBEDDING else "fp32"
        raise UnsupportedModelError(
            f"{source.name} is {kind}: its engines are {precisions} and name CUDA themselves "
            "(an fp32 encoder runs on the CUDA execution provider as it is); export it without --precision fp16, --device cuda or --backend tensorrt"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        if source.task == TASK_TEXT_GENERATION:
            manifest, parity = _export_decoder(source, staging, target.name, options, progress)
        elif source.task == TASK_RERANK:
            manifest, parity = _export_reranker(source, staging, target.name, options, progress)
        else:
            manifest, parity = _export_encoder(source, staging, target.name, options, progress)
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress.note(f"engine written to {target}")
    return ExportResult(target, manifest, parity, time.monotonic() - started)


def _exporter_versions(*packages: str) -> dict[str, str]:
    versions = {}
    for package in ("appliance", "onnxruntime", "onnx", "torch", "transformers", *packages):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _export_decoder(source: ModelSource, staging: Path, name: str, options: ExportOptions, progress: Progress) -> tuple[Manifest, dict]:
    from export import gqa_builder
    from export.families import unsupported_reason
    from export.loading import open_decoder_source, read_decoder_config, save_tokenizer
    from export.onnx_writer import DATA_FILE
    from export.reference import StreamedReference, WholeModelReference

    config = read_decoder_config(source)
    trained = int(getattr(config, "max_position_embeddings", 0) or 0)
    if trained and options.max_context > trained:
        raise ExportError(f"--max-context {options.max_context} exceeds the {trained} positions {source.name} was trained for; choose at most {trained}")
    reason = unsupported_reason(config, options.max_context)
    if options.builder == "gqa" and reason:
        raise UnsupportedModelError(f"--builder gqa cannot build {source.architecture}: {reason}")
    use_gqa = options.builder == "gqa" or (options.builder == "auto" and reason is None)
    fallback = ""  # why the optimum graph, when it is the one
    quant = options.quantization
    if options.target_device == "cuda" and not use_gqa:
        raise UnsupportedModelError(
            f"GPU engines (fp16 GroupQueryAttention) need our builder, which cannot build {source.architecture}: "
            f"{reason or '--builder optimum was chosen'}; export it for the CPU (--precision fp32 --device cpu)"
        )
    if quant is not None and not use_gqa:
        raise UnsupportedModelError(
            f"--precision {options.precision} needs our GroupQueryAttention builder, which cannot build "
            f"{source.architecture}: {reason or '--builder optimum was chosen'}; export it with --precision fp32"
        )
    needs = _resource_needs(source, config, options, use_gqa)
    if options.check_resources:
        budget.check(needs, staging.parent, options.memory_limit)
    with progress.step(f"reading {source.path.name}: tokenizer and tensor index"):
        opened = open_decoder_source(source, config)
    size = f"{opened.tensors.nbytes() / 1e6:,.0f} MB of weights"
    built: BuiltGraph | OptimumGraph
    reference: Reference
    providers: tuple[str, ...]
    extra: tuple[str, ...]
    if use_gqa:
        kind = options.precision if quant is None else f"{options.precision} (blocks of {quant.block_size}, lm_head {quant.lm_head})"
        kind += ", fp16 compute for the GPU" if options.compute_dtype == "float16" and options.precision != "fp16" else ""
        layers = int(config.num_hidden_layers)
        title = f"building the GroupQueryAttention graph from {size}, {kind}, KV buffer of {options.max_context} positions"
        with progress.step(title, total=layers) as step:

            def layer_done(index: int) -> None:
                opened.tensors.release()  # the layer's source pages, read once, are not kept
                step.advance(detail=f"layers, {_file_mb(staging / DATA_FILE)} written")

            built = gqa_builder.build_gqa_graph(
                config, opened.tensors, options.max_context, staging, quant, options.compute_dtype,
                on_layer=layer_done,
            )  # fmt: skip
        opened.tensors.release()
        # fp32 GroupQueryAttention runs on the CPU only (ONNX Runtime's CUDA kernel is fp16/bf16),
        # and fp16 engines are meant for the GPU: each names its own providers.
        style, providers, extra = STYLE_GQA_SHARED_KV, options.execution_providers, ()
        reference = StreamedReference(opened.skeleton, opened.tensors)
    else:
        from export import optimum_export
        from export.loading import load_decoder

        why = reason if options.builder == "auto" else "--builder optimum"
        fallback = f"our GroupQueryAttention builder cannot build {source.architecture}: {reason}" if options.builder == "auto" else "--builder optimum was chosen"
        progress.note(f"{fallback}; falling back to optimum's concat-kv graph, which serves ONE sequence at a time (no continuous batching, prefix reuse or batch invariance)")
        with progress.step(f"loading the whole model ({size}) with transformers for optimum's exporter ({why})"):
            loaded = load_decoder(source)
        with progress.step("exporting with optimum, concatenated KV"):
            built = optimum_export.export_concat_decoder(loaded.model, options.max_context, staging)
        style, providers, extra = STYLE_CONCAT_KV, ("CUDAExecutionProvider", "CPUExecutionProvider"), ("optimum", "optimum-onnx")
        reference = WholeModelReference(loaded.model)

    manifest = Manifest(
        name=name,
        task=TASK_TEXT_GENERATION,
        architecture=opened.architecture,
        model_type=config.model_type,
        style=style,
        graph_file=built.graph_file,
        inputs=built.inputs,
        outputs=built.outputs,
        kv_cache=built.kv_cache,
        precision=options.precision,
        execution_providers=providers,
        tensorrt=tensorrt_spec(built, options, staging / built.graph_file) if options.backend == "tensorrt" else None,
        vocab_size=int(config.vocab_size),
        context_length=options.max_context,
        bos_token_id=opened.bos_token_id,
        eos_token_ids=opened.eos_token_ids,
        pad_token_id=opened.pad_token_id,
        add_bos_token=_adds_bos(opened.tokenizer, opened.bos_token_id),
        chat_template=opened.chat_template,
        source=source.describe(),
        export_options=dataclasses.asdict(options) | {"builder_used": "gqa" if use_gqa else "optimum"} | ({} if use_gqa else {"fallback_reason": fallback}),
        exporter=_exporter_versions(*extra),
        created=_now(),
    )
    with progress.step("writing tokenizer.json and manifest.json"):
        changes = save_tokenizer(opened.tokenizer, staging / TOKENIZER_FILE)
        manifest = dataclasses.replace(manifest, tokenizer_changes=changes)
        write_manifest(staging, manifest)
    if options.backend == "tensorrt":
        with progress.step("building the TensorRT plans (minutes: TensorRT times kernels for this GPU)"):
            manifest = build_tensorrt_plans(staging, manifest)
    parity = _validate_decoder(staging, manifest, opened.tokenizer, reference, options, progress)
    parity["precision"] = options.precision
    parity["graph"] = {"style": style, "builder": "gqa" if use_gqa else "optimum"} | ({} if use_gqa else {"fallback_reason": fallback, "batched_decode": False})
    parity["compute_dtype"] = options.compute_dtype
    parity["export_resources"] = {"estimated_peak_memory_bytes": needs.memory, "estimated_engine_bytes": needs.engine}
    if isinstance(built, gqa_builder.BuiltGraph):
        parity["matmul_weight_bytes"] = built.matmul_weight_bytes
    if quant is not None:
        assert isinstance(built, gqa_builder.BuiltGraph)  # quantization needs our builder (refused above otherwise)
        parity["weight_quantization"] = dataclasses.asdict(quant)
        if quant.method == "source-blocks":
            parity["source_blocks"] = {"carried_exactly": list(built.carried), "rounded": list(built.rounded), "rounded_with": _rounded_with()}
    if options.precision == "fp16":
        parity["fp16_bars"] = {"max_rel_logit_error": FP16_MAX_REL_LOGIT_ERROR, "min_top1_agreement": FP16_MIN_TOP1_AGREEMENT}
    _write_parity(staging, manifest, parity)
    if not parity["tokenizer_identical"]:
        bad = [r["name"] for r in parity["prompts"] if not r["tokenizer_identical"]]
        raise ParityError(f"tokenizer.json does not reproduce transformers' token ids (prompts: {', '.join(bad)}); this tokenizer cannot be exported")
    if options.precision == "fp32" and not parity["greedy_identical"]:
        bad = [f"{r['name']} at token {r['first_divergence']}" for r in parity["prompts"] if not r["greedy_identical"]]
        raise ParityError(
            f"fp32 engine's greedy tokens differ from PyTorch ({'; '.join(bad)}; max abs logit error "
            f"{parity['max_abs_logit_error']:.3g}); the graph is wrong for this model: try --builder optimum"
        )
    if quant is not None and isinstance(built, gqa_builder.BuiltGraph) and built.rounded:
        progress.note(
            f"{len(built.rounded)} of {len(built.rounded) + len(built.carried)} matrices were not in a block type carried exactly "
            f"(Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K) and were quantized instead, {_rounded_with()} (parity.json lists them)"
        )
    if options.precision == "fp16":
        _check_fp16_parity(parity)
    if options.precision != "fp32":
        versus = parity["versus_fp32"]
        progress.note(
            f"{options.precision} engine vs the fp32 reference: top-1 agreement {versus['top1_agreement']:.4f} over "
            f"{versus['positions']} positions, mean KL {versus['mean_kl']:.4f}"
        )
    return manifest, parity


def _file_mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:,.0f} MB" if path.exists() else "0 MB"


def _resource_needs(source: ModelSource, config: Any, options: ExportOptions, use_gqa: bool) -> budget.Needs:
    """The export's expected peak memory and disk (export/budget.py), from the config and the
    source's size alone: known before any weight or the tokenizer is read."""
    quant = options.quantization
    # int4 from a GGUF of a carried type takes its blocks: the engine is about the file's size.
    carried = source.kind == "gguf" and use_gqa and quant is not None and quant.method == "source-blocks"
    file_type = source.gguf.get("general.file_type") if carried else None
    growth = budget.CARRIED_FILE_TYPES.get(int(file_type), 0.0) if file_type is not None else 0.0
    carried = carried and growth > 0
    if source.kind == "gguf":
        size = source.path.stat().st_size
    else:
        size = sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in source.path.glob(pattern))
    names_head = bool(getattr(config, "tie_word_embeddings", False))
    needs = budget.estimate(config, size, options.precision, carried, names_head, options.max_context, growth or 1.0)
    if not use_gqa:  # optimum's exporter traces the model loaded whole in fp32
        needs = budget.Needs(memory=needs.memory + 3 * 4 * budget.parameters(config), disk=needs.disk, engine=needs.engine)
    return needs


def _validate_decoder(staging: Path, manifest: Manifest, tokenizer: Any, reference: Reference, options: ExportOptions, progress: Progress) -> dict:
    """Parity in three passes (export/parity.py): the engine, then the fp32 reference, then the comparison;
    the engine's logits wait in a scratch folder beside the staging one, so the engine and the
    reference are never in memory together."""
    from export.parity import compare_decoder, compare_quantized, reference_sequences, run_engine
    from export.prompts import DECODER_PROMPTS

    settings = _check_settings(manifest)
    where = ", ".join(settings.providers) if settings.providers else ", ".join(manifest.execution_providers)
    passages = options.precision != "fp32"
    count = len(DECODER_PROMPTS) + (len(reference_sequences(tokenizer)) if passages else 0)
    scratch = staging.parent / f"{staging.name}.parity"
    scratch.mkdir()
    try:
        what = f"{options.parity_tokens} greedy tokens for {len(DECODER_PROMPTS)} prompts" + (", and the reference passages" if passages else "")
        with progress.step(f"running the engine ({where}): {what}", total=count) as step:
            run = run_engine(staging, tokenizer, scratch, options.parity_tokens, passages=passages, on_item=lambda name: step.advance(detail=name), settings=settings)
        gc.collect()  # the engine's session and KV pool go before the reference comes
        positions = sum(len(s) for s in run.sequences())
        layers = int(manifest.kv_cache.layers) if manifest.kv_cache else None
        with progress.step(f"the fp32 reference over {positions:,} positions, a layer at a time", total=layers) as step:
            reference.run(run.sequences(), on_layer=lambda done, total: step.advance(detail="layers"), forward_ends=run.forward_ends())
        with progress.step("comparing the engine with the reference"):
            parity = compare_decoder(run, reference, tokenizer)
            if passages:
                parity["versus_fp32"] = compare_quantized(run, reference)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return parity


# fp16 engines pass when their logits stay within fp16's reach of PyTorch's fp32 ones: the
# largest logit error at most this fraction of the largest |logit| (SmolLM2: see parity.json;
# fp16 keeps 11 significant bits, ~5e-4 relative per operation, and 30 layers compound it).
FP16_MAX_REL_LOGIT_ERROR = 0.02
# ...and their teacher-forced top-1 agreement with the fp32 engine at least this.
FP16_MIN_TOP1_AGREEMENT = 0.97


def _check_fp16_parity(parity: dict[str, Any]) -> None:
    """Fail an fp16 export whose logits are off by more than fp16 rounding explains."""
    versus = parity["versus_fp32"]
    if parity["max_rel_logit_error"] > FP16_MAX_REL_LOGIT_ERROR or versus["top1_agreement"] < FP16_MIN_TOP1_AGREEMENT:
        raise ParityError(
            f"the fp16 engine is further from PyTorch than fp16 rounding explains: largest logit error "
            f"{parity['max_rel_logit_error']:.3g} of the largest logit (bar {FP16_MAX_REL_LOGIT_ERROR}), top-1 agreement with the "
            f"fp32 engine {versus['top1_agreement']:.4f} (bar {FP16_MIN_TOP1_AGREEMENT}); this model may overflow fp16 "
            "activations: export it for the CPU (--precision fp32) instead"
        )


def _check_settings(manifest: Manifest) -> RuntimeSettings:
    """How the export's parity check runs the engine: on its own providers where this machine has
    them, else (a GPU engine on a machine without a GPU) on the CPU execution provider, which
    runs the same fp16 graph; parity.json records which."""
    from runtime.session import available_providers

    if not manifest.requires_gpu:
        return RuntimeSettings()
    if nvidia_gpu_present() and any(p in available_providers() for p in manifest.execution_providers):
        return RuntimeSettings(providers=(*manifest.execution_providers, CPU))
    return RuntimeSettings(providers=(CPU,))


def _adds_bos(tokenizer: Any, bos: int | None) -> bool:
    """Whether plain tokenization (add_special_tokens) puts BOS in front, as the runtime will."""
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _encoder_manifest(
    source: ModelSource, built: Any, name: str, options: ExportOptions, config: Any, task: str, context_length: int, **section: Any
) -> Manifest:
    """The manifest of an encoder engine built by optimum (an embedder or a reranker; `section`
    is its task's own part of the manifest)."""
    return Manifest(
        name=name,
        task=task,
        architecture=source.architecture,
        model_type=source.model_type,
        style=STYLE_ENCODER,
        graph_file=built.graph_file,
        inputs=built.inputs,
        outputs=built.outputs,
        precision=options.precision,
        execution_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        vocab_size=int(config.get("vocab_size", 0)),
        context_length=context_length,
        pad_token_id=config.get("pad_token_id"),
        source=source.describe(),
        export_options=dataclasses.asdict(options) | {"builder_used": "optimum"},
        exporter=_exporter_versions("optimum", "optimum-onnx", "sentence-transformers"),
        created=_now(),
        **section,
    )


def _export_encoder(source: ModelSource, staging: Path, name: str, options: ExportOptions, progress: Progress) -> tuple[Manifest, dict]:
    from export import optimum_export
    from export.loading import quiet_libraries, read_sentence_transformers_config
    from export.parity import COSINE_BAR, QUANTIZED_COSINE_BAR, encoder_parity

    if source.kind != "hf":
        raise UnsupportedModelError(f"{source.path}: embedding models are exported from Hugging Face folders only")
    quiet_libraries()
    config = json.loads((source.path / "config.json").read_text())
    st = read_sentence_transformers_config(source.path)
    with progress.step("exporting the encoder with optimum (feature-extraction)"):
        built = optimum_export.export_encoder(source.path, staging)
    if options.precision != "fp32":
        from export.quantize import quantize_graph_matmuls

        bits = int(options.precision[3:])
        with progress.step(f"quantizing the encoder's weights to {options.precision} (blocks of {options.block_size})"):
            if not quantize_graph_matmuls(staging / built.graph_file, bits, options.block_size, options.symmetric, options.accuracy_level):
                raise UnsupportedModelError(f"{source.path}: the encoder has no constant MatMul weights to quantize; export it with --precision fp32")
    with progress.step("writing tokenizer.json and manifest.json"):
        tokenizer_json = source.path / TOKENIZER_FILE
        if tokenizer_json.is_file():
            shutil.copyfile(tokenizer_json, staging / TOKENIZER_FILE)
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(source.path)).backend_tokenizer.save(str(staging / TOKENIZER_FILE))
        positions = int(config.get("max_position_embeddings", 512))
        max_tokens = min(st.get("max_seq_length") or positions, positions)
        embedding = EmbeddingSpec(
            pooling=st.get("pooling", "mean"),
            normalize=bool(st.get("normalize", False)),
            dimension=int(st.get("dimension") or config["hidden_size"]),
            max_input_tokens=max_tokens,
        )
        manifest = _encoder_manifest(source, built, name, options, config, TASK_EMBEDDING, max_tokens, embedding=embedding)
        write_manifest(staging, manifest)
    with progress.step("validating against the PyTorch model"):
        parity = encoder_parity(source.path, staging, cosine_bar=COSINE_BAR if options.precision == "fp32" else QUANTIZED_COSINE_BAR)
    parity["precision"] = options.precision
    _write_parity(staging, manifest, parity)
    if not parity["passed"]:
        raise ParityError(
            f"the {options.precision} embedding engine's minimum cosine with PyTorch is {parity['min_cosine']:.6f}, below {parity['cosine_bar']}"
            + {"fp32": "", "int8": "; export it with --precision fp32"}.get(options.precision, "; export it with --precision int8 or fp32")
        )
    return manifest, parity


def _export_reranker(source: ModelSource, staging: Path, name: str, options: ExportOptions, progress: Progress) -> tuple[Manifest, dict]:
    """Export the cross-encoder of `source` into `staging`; the manifest and parity.json written."""
    from export import optimum_export
    from export.cross_encoder import SCORE_ATOL, SCORE_RTOL, cross_encoder_parity, cross_encoder_settings
    from export.loading import quiet_libraries

    if source.kind != "hf":
        raise UnsupportedModelError(f"{source.path}: rerankers are exported from Hugging Face folders only")
    if options.precision != "fp32":
        raise UnsupportedModelError(
            f"{source.name} is a reranker (cross-encoder): its engines are fp32 only for now (quantized rerankers have no "
            "measured bar on ranking quality yet); export it with --precision fp32"
        )
    quiet_libraries()
    config = json.loads((source.path / "config.json").read_text())
    with progress.step("reading the cross-encoder's settings with sentence-transformers"):
        spec = cross_encoder_settings(source.path)
    with progress.step("exporting the cross-encoder with optimum (text-classification)"):
        built = optimum_export.export_cross_encoder(source.path, staging)
    with progress.step("writing tokenizer.json and manifest.json"):
        tokenizer_json = source.path / TOKENIZER_FILE
        if tokenizer_json.is_file():
            shutil.copyfile(tokenizer_json, staging / TOKENIZER_FILE)
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(source.path)).backend_tokenizer.save(str(staging / TOKENIZER_FILE))
        manifest = _encoder_manifest(source, built, name, options, config, TASK_RERANK, spec.max_input_tokens, rerank=spec)
        write_manifest(staging, manifest)
    with progress.step("validating against sentence-transformers' CrossEncoder"):
        parity = cross_encoder_parity(source.path, staging)
    parity["precision"] = options.precision
    _write_parity(staging, manifest, parity)
    if not parity["tokenizer_identical"]:
        raise ParityError("tokenizer.json does not cut and frame the parity pairs as transformers' tokenizer does; this tokenizer cannot be exported")
    if not parity["passed"]:
        raise ParityError(
            f"the reranker's scores differ from CrossEncoder.predict by up to {parity['max_abs_error']:.3g} "
            f"(bar {SCORE_ATOL} + {SCORE_RTOL} x |score|); the graph is wrong for this model"
        )
    return manifest, parity


def _rounded_with() -> str:
    """How a source-blocks export quantizes the matrices it cannot carry (parity.json, the export's note)."""
    from export.quantize import SOURCE_BLOCKS_FALLBACK

    return f"int4 with {SOURCE_BLOCKS_FALLBACK}, int8 (the head) to nearest"


def _write_parity(staging: Path, manifest: Manifest, parity: dict[str, Any]) -> None:
    """parity.json, then the manifest again so its hashes cover parity.json too."""
    (staging / PARITY_FILE).write_text(json.dumps(parity, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_manifest(staging, manifest)
