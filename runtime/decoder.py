"""Decoder steps: run a prefill chunk or a batched decode step against the KV cache.

Two graph styles exist (see runtime.manifest):

* `SharedKVDecoder` drives our GroupQueryAttention graphs. The KV pool is allocated once,
  per layer a key and a value tensor of shape [slots, kv_heads, max_length, head_dim]. A
  step over slots [a, a+n) binds the pool's memory at slot a, with shape
  [n, kv_heads, max_length, head_dim], as both the past input and the present output, so
  the graph writes the new positions in place: nothing is copied or reallocated per token.
* `ConcatKVDecoder` drives optimum's graphs, whose present is a fresh tensor holding past
  + new positions. The present OrtValues are fed back as the next past without ever
  leaving ONNX Runtime (no numpy round trip); one sequence per slot, run one at a time.

Both keep, per slot, how many positions are in the cache and which token ids they hold,
and return float32 logits. The shared pool can also keep a finished sequence's positions for
a later prompt that starts with the same tokens (`common_prefix`, `truncate`, `swap`): the
scheduler's prefix reuse.
"""

from __future__ import annotations

from runtime.concat_kv import ConcatKVDecoder
from runtime.decoder_base import Decoder
from runtime.engine import Engine
from runtime.errors import ManifestError
from runtime.manifest import STYLE_CONCAT_KV, STYLE_GQA_SHARED_KV, TASK_TEXT_GENERATION
from runtime.shared_kv import SharedKVDecoder

__all__ = ["ConcatKVDecoder", "Decoder", "SharedKVDecoder", "open_decoder"]


def open_decoder(
    engine: Engine, slots: int = 1, batch_invariant: bool = False, device_side: bool | None = None
) -> SharedKVDecoder | ConcatKVDecoder:
    """The decoder matching the engine's graph style, with room for `slots` sequences.

    `batch_invariant` (GroupQueryAttention graphs): a lone sequence's steps run as two rows,
    so that its output is bit for bit what it would be in any batch (SharedKVDecoder._padded_step).
    `device_side` (GroupQueryAttention graphs): keep the KV pool and the decode inputs and
    logits in ONNX Runtime memory (OrtValues) instead of numpy arrays; the default is what the
    engine's device needs (True on a GPU). On the CPU it runs the very code a GPU runs.
    """
    manifest = engine.manifest
    if manifest.task != TASK_TEXT_GENERATION:
        raise ManifestError(f"engine {manifest.name!r} is a {manifest.task} engine, not a text generator")
    if manifest.style == STYLE_GQA_SHARED_KV:
        return SharedKVDecoder(engine, slots, batch_invariant, device_side)
    if manifest.style == STYLE_CONCAT_KV:
        return ConcatKVDecoder(engine, slots)
    raise ManifestError(f"engine {manifest.name!r}: no decoder for graph style {manifest.style!r}")
