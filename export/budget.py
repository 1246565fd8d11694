"""What an export will need, in memory and disk, checked against the machine before any work.

The streaming export's memory is bounded by the source, not by the model in fp32 (see
export/tensors.py and export/reference.py). Its peak is the largest of three phases:

* building the graph: one (fused) matrix in fp32 for the paths that round or convert floats,
  nothing for carried GGUF blocks (they are re-laid block by block);
* running the engine over the parity prompts: ONNX Runtime holds the engine's initializers
  and the packed copies its quantized kernels make at load, plus the logits of one sequence;
* the layer-streamed fp32 reference: one decoder layer in fp32, the hidden states of every
  sequence, and one sequence's logits at a time.

The estimate is meant to be a little above what the export uses (docs/exporting.md has the
measured peaks beside it); `--memory-limit` lowers the bound, e.g. to leave room for a server
running beside the export.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ExportError, InsufficientResourcesError

GIB = 1 << 30
MIB = 1 << 20
# Python, numpy, torch, transformers, onnxruntime and the tokenizer, before any weight is read
# (measured: 0.55 GB with a 49k-token GGUF tokenizer).
BASE_BYTES = 700 * MIB
# ONNX Runtime holds an int4 engine at about 1.7 × its file once loaded, and up to 2 × while it
# loads and runs (the fp16 scales folded to fp32, the packed copies its quantized kernels make):
# fitted with LOGITS_COPIES to the peaks measured at 300M, 1B and 3B shapes (docs/exporting.md).
SESSION_FACTOR = 2.0
# Copies of one sequence's logits alive at once while the engine runs (ONNX Runtime's output,
# the runtime's copy, the saved array), with room for the allocator's noise: the same 300M
# export peaked at 1.31 GB here and 1.46 GB in a CI run.
LOGITS_COPIES = 8
# GGUF general.file_type values whose blocks the int4 engine carries as they are
# (export/blocks.py), and the engine's size over the file's: the same bytes for Q4_0/Q4_1/Q8_0;
# more where a type is carried in wider blocks (Q5_* and Q6_K as 8-bit, the K-quants' fp32
# scales and offsets: bytes per 32 weights in the engine over the file's, Q4_K_M/Q5_K_M as
# mixes with about a third of their weights in Q6_K).
CARRIED_FILE_TYPES = {
    2: 1.0,  # MOSTLY_Q4_0
    3: 1.0,  # MOSTLY_Q4_1
    7: 1.0,  # MOSTLY_Q8_0
    8: 34 / 22,  # MOSTLY_Q5_0
    9: 36 / 24,  # MOSTLY_Q5_1
    14: 24 / 18,  # MOSTLY_Q4_K_S
    15: 1.4,  # MOSTLY_Q4_K_M
    16: 40 / 22,  # MOSTLY_Q5_K_S
    17: 1.7,  # MOSTLY_Q5_K_M
    18: 40 / 26.25,  # MOSTLY_Q6_K
}
# Positions the parity check runs at once (a passage, a prompt chunk: export/parity.py PROMPT_CHUNK).
SEQUENCE_POSITIONS = 256
# KV positions the parity check touches at most (the longest prompt and its greedy tokens).
KV_POSITIONS_TOUCHED = 1200
# Positions in the parity prompts and the reference passages, for the scratch files.
PARITY_POSITIONS = 5 * 320 + 2304


@dataclass(frozen=True)
class Needs:
    """What an export is expected to take at its peak."""

    memory: int
    disk: int
    engine: int

    def describe(self) -> str:
        return f"about {self.memory / GIB:.1f} GiB of memory and {self.disk / GIB:.1f} GiB of disk (engine about {self.engine / GIB:.2f} GiB)"


def _shapes(config: Any) -> tuple[int, int, int, int]:
    """(parameters in the projection matrices, in the largest layer, in the largest fused matrix,
    embedding parameters)."""
    # Families without grouped-query attention (GPT-2 and the like, optimum's fallback) name no
    # KV heads, and some no intermediate size (4 × hidden).
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    inter = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    attention = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * inter
    layer = attention + mlp
    return layer * int(config.num_hidden_layers), layer, max(2 * hidden * inter, hidden * (heads + 2 * kv_heads) * head_dim), int(config.vocab_size) * hidden


def parameters(config: Any) -> int:
    """The model's parameter count (projections and embedding; norms are negligible)."""
    matrices, _, _, embedding = _shapes(config)
    return matrices + embedding


def estimate(config: Any, source_bytes: int, precision: str, carried: bool, tied: bool, max_context: int, growth: float = 1.0) -> Needs:
    """The memory and disk an export of this model is expected to need.

    `carried`: the matrices come as GGUF blocks the engine takes as they are (int4 from a
    file of a CARRIED_FILE_TYPES type), so the engine is the source's size times `growth`.
    """
    matrices, layer, fused, embedding = _shapes(config)
    vocab = int(config.vocab_size)
    heads = embedding * (1 if tied else 2)
    if carried:
        engine = int(source_bytes * growth)
    elif precision == "fp32":
        engine = 4 * (matrices + heads)
    elif precision == "fp16":
        engine = 2 * (matrices + heads)
    else:
        # A block of 32: the levels, an fp32 scale, and an fp32 offset (HQQ's float zero point,
        # int4's default for float weights) or a zero point.
        per_weight = {"int4": 0.5 + 8 / 32, "int8": 1 + 5 / 32}[precision]
        engine = int(per_weight * matrices) + 4 * embedding + int(1.2 * embedding)
    head_dim = int(getattr(config, "head_dim", None) or int(config.hidden_size) // int(config.num_attention_heads))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    # The KV pool is mapped lazily: only the positions the longest parity prompt reaches are touched.
    kv = 2 * int(config.num_hidden_layers) * kv_heads * head_dim * min(max_context, KV_POSITIONS_TOUCHED) * 4
    logits = SEQUENCE_POSITIONS * vocab * 4
    build = 0 if carried else 3 * 4 * fused  # the fused matrix in fp32, its transpose and its quantized blocks
    session = int(SESSION_FACTOR * engine) + kv + LOGITS_COPIES * logits
    reference = 4 * layer + 2 * 4 * fused + 4 * logits  # a layer in fp32, a de-quantization's temporaries, two sides' log-softmax
    memory = BASE_BYTES + max(build, session, reference)
    scratch = PARITY_POSITIONS * vocab * 4  # the engine's logits, kept on disk between the passes
    return Needs(memory=memory, disk=engine + scratch + 64 * MIB, engine=engine)


def available_memory() -> int:
    """Bytes this process can still take: MemAvailable, or the cgroup's room if that is less."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = int(limit) - used
            available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    if available is None:  # not Linux: trust the physical size
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return available


def check(needs: Needs, out_parent: Path, memory_limit: int | None = None) -> None:
    """InsufficientResourcesError, in one line, when the memory or disk at hand is short."""
    memory = available_memory() if memory_limit is None else memory_limit
    where = "the --memory-limit" if memory_limit is not None else "this machine's available memory"
    if needs.memory > memory:
        raise InsufficientResourcesError(
            f"this export needs {needs.describe()}, but {where} is {memory / GIB:.1f} GiB: free memory, "
            "export on a bigger machine and copy the engine directory over, or pass --no-resource-check to try anyway"
        )
    probe = out_parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needs.disk > free:
        raise InsufficientResourcesError(
            f"this export needs {needs.describe()}, but {probe} has {free / GIB:.1f} GiB free: make room or choose another --out"
        )


def parse_size(text: str) -> int:
    """'2G', '1536M', '3.5GiB', '800000000' → bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": MIB, "G": GIB, "T": 1 << 40}.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in "KMGT" else value
    try:
        size = float(number) * scale
    except ValueError:
        raise ExportError(f"--memory-limit {text!r} is not a size; write it like 2G, 1536M or 3.5GiB") from None
    if size <= 0:
        raise ExportError(f"--memory-limit {text!r} must be more than zero")
    return int(size)
