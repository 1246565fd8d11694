"""`ConcatKVDecoder`: optimum's graphs, whose present is a fresh tensor holding past + new positions.

The present OrtValues are fed back as the next past without ever leaving ONNX Runtime (no numpy
round trip); one sequence per slot, run one at a time.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from runtime.decoder_base import NUMPY_DTYPES, DecoderBase
from runtime.engine import Engine


class ConcatKVDecoder(DecoderBase):
    """optimum-style graph: the present is past + new; it becomes the next step's past."""

    def __init__(self, engine: Engine, slots: int = 1) -> None:
        super().__init__(engine, slots)
        manifest = self.manifest
        kv = manifest.require_kv_cache()
        mask = manifest.input("attention_mask")
        positions = manifest.input("position_ids")
        self._mask = mask.name if mask else None
        self._positions = positions.name if positions else None
        self.dtype = NUMPY_DTYPES[kv.dtype]
        self._empty = np.zeros((1, kv.kv_heads, 0, kv.head_dim), dtype=self.dtype)
        self._cache: list[list[ort.OrtValue] | None] = [None] * slots

    def reset(self, slot: int) -> None:
        super().reset(slot)
        self._cache[slot] = None

    def _step(self, first_slot: int, ids: np.ndarray, keep: int) -> np.ndarray:
        if ids.shape[0] != 1:
            raise ValueError("concatenating graphs run one sequence per step")
        slot, new = first_slot, ids.shape[1]
        self._check_room(slot, new)
        past_length = int(self.lengths[slot])
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._ids, np.ascontiguousarray(ids))
        if self._mask:
            binding.bind_cpu_input(self._mask, np.ones((1, past_length + new), dtype=np.int64))
        if self._positions:
            binding.bind_cpu_input(self._positions, np.arange(past_length, past_length + new, dtype=np.int64)[None])
        cache = self._cache[slot]
        for layer, names in enumerate(self._past):
            for kind, name in enumerate(names):
                if cache is None:
                    binding.bind_cpu_input(name, self._empty)
                else:
                    binding.bind_ortvalue_input(name, cache[2 * layer + kind])
        binding.bind_output(self._logits, "cpu")
        for names in self._present:
            for name in names:
                binding.bind_output(name, self.device)
        self._run(binding)
        outputs = binding.get_outputs()
        self._cache[slot] = list(outputs[1:])
        self.lengths[slot] += new
        # The graph computes logits for every position; keep only what was asked for.
        return outputs[0].numpy()[:, -keep:, :].astype(np.float32, copy=False)
