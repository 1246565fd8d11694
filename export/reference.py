"""The fp32 reference an engine is checked against, computed within the export's memory bound.

`StreamedReference` runs transformers' own modules of the model (its decoder layer class,
rotary embedding, causal mask and final norm) in fp32, but one layer at a time: the layer's
weights are read from the tensor source, every position of every sequence goes through it,
and the weights are dropped before the next layer. Only the sequences' hidden states
([positions, hidden] each) live across layers, and the vocabulary projection is computed a
slice of the vocabulary at a time. Memory: one layer in fp32 plus the hidden states, instead
of the whole model in fp32 (5 GB for a 1B model, 32 GB for an 8B one).

Every position is computed at once (teacher forcing), so the reference's greedy tokens are
checked by feeding it the engine's: if the reference's most likely next token equals the
engine's at every step, its own greedy decode is the same sequence (export/parity.py).

`WholeModelReference` is the same interface over a model loaded whole (the optimum fallback,
which needs the PyTorch module anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from export.tensors import TensorSource, iter_row_chunks

# Vocabulary rows projected at a time (4096 × hidden 4096 × 4 B = 64 MB for an 8B model).
VOCAB_CHUNK = 4096


class Reference(Protocol):
    description: str

    def run(
        self, sequences: Sequence[Sequence[int]], on_layer: Callable[[int, int], None] = ..., forward_ends: Sequence[Sequence[int]] | None = None
    ) -> None:
        """Compute whatever `logits(i)` needs for each sequence. `forward_ends`: where the engine's
        forwards over each sequence ended (LongRoPE's factors follow them), None for one forward."""
        ...

    def logits(self, index: int) -> np.ndarray:
        """Next-token logits [positions, vocab] (fp32) at every position of sequence `index`."""
        ...


class StreamedReference:
    """transformers' decoder layers in fp32, a layer at a time over every position."""

    description = (
        "transformers' own modules of the model in fp32, run one decoder layer at a time over every position "
        "of every sequence (teacher forcing), weights read from the same source a layer at a time"
    )

    def __init__(self, skeleton: Any, tensors: TensorSource) -> None:
        self.skeleton = skeleton  # the model on the meta device
        self.tensors = tensors
        self.config = skeleton.config
        self.hidden: list[np.ndarray] = []

    def _load(self, module: Any, prefix: str) -> Any:
        """`module` (on the meta device) with its weights from the source, in fp32, assigned in place."""
        import torch

        state = {key: torch.from_numpy(self.tensors.float(f"{prefix}.{key}")) for key in module.state_dict()}
        module.load_state_dict(state, assign=True)
        return module

    def run(
        self,
        sequences: Sequence[Sequence[int]],
        on_layer: Callable[[int, int], None] = lambda done, total: None,
        forward_ends: Sequence[Sequence[int]] | None = None,
    ) -> None:
        import copy

        import torch
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        from export.families import family_plan

        base = self.skeleton.model
        layers = int(self.config.num_hidden_layers)
        plan = family_plan(self.config)
        # Rotary embeddings built on the CPU: their inv_freq is computed, not loaded. Gemma 3's
        # local layers have their own (its base, no scaling), built as transformers builds it.
        rotary = type(base.rotary_emb)(config=self.config)
        local_rotary = None
        if hasattr(base, "rotary_emb_local"):
            local = copy.deepcopy(self.config)
            local.rope_theta, local.rope_scaling = self.config.rope_local_base_freq, {"rope_type": "default"}
            local_rotary = type(base.rotary_emb_local)(config=local)
        embedded = self._embed(sequences)
        with torch.inference_mode():
            states: list[Any] = []
            extras: list[dict[str, Any]] = []
            for rows in embedded:
                hidden = torch.from_numpy(rows)[None]
                if plan.embedding_scale != 1.0:  # Granite's multiplier, Gemma's √hidden (in fp32, as transformers)
                    hidden = hidden * torch.tensor(plan.embedding_scale, dtype=torch.float32)
                positions = torch.arange(hidden.shape[1])
                mask_args = {"config": self.config, "input_embeds": hidden, "attention_mask": None, "cache_position": positions,
                             "past_key_values": None, "position_ids": positions[None]}  # fmt: skip
                masks = {"full": create_causal_mask(**mask_args)}
                if any(layer.window for layer in plan.layers):
                    masks["sliding"] = create_sliding_window_causal_mask(**mask_args)
                if local_rotary is not None:
                    embeddings = {"position_embeddings_global": rotary(hidden, positions[None]), "position_embeddings_local": local_rotary(hidden, positions[None])}
                elif plan.long_rope_from:
                    ends = forward_ends[len(extras)] if forward_ends is not None else [hidden.shape[1]]
                    embeddings = {"position_embeddings": self._long_rope(rotary, hidden, ends, plan.long_rope_from)}
                else:
                    embeddings = {"position_embeddings": rotary(hidden, positions[None])}
                extras.append({"masks": masks, "position_ids": positions[None], "cache_position": positions, **embeddings})
                states.append(hidden)
            del embedded
            for i in range(layers):
                layer = self._load(base.layers[i], f"model.layers.{i}")
                mask_kind = "sliding" if plan.layers[i].window else "full"
                for j, hidden in enumerate(states):
                    kwargs = {k: v for k, v in extras[j].items() if k != "masks"}
                    out = layer(hidden, attention_mask=extras[j]["masks"][mask_kind], past_key_values=None, use_cache=False, **kwargs)
                    states[j] = out[0] if isinstance(out, tuple) else out
                base.layers[i] = layer.to("meta")  # the layer's fp32 weights are dropped here
                self.tensors.release()
                on_layer(i + 1, layers)
            norm = self._load(base.norm, "model.norm")
            self.hidden = [norm(hidden)[0].numpy() for hidden in states]
            base.norm = norm.to("meta")

    @staticmethod
    def _long_rope(rotary: Any, hidden: Any, ends: Sequence[int], long_from: int) -> tuple[Any, Any]:
        """cos, sin for every position as transformers computes them when the sequence comes in
        forwards ending at `ends` over a cache: a position gets the long factors when the forward
        that computed it reached past `long_from` positions (its keys keep them afterwards)."""
        import torch

        positions = torch.arange(hidden.shape[1])[None]
        short = _fixed(rotary, hidden, positions, rotary.original_inv_freq)
        long = _fixed(rotary, hidden, positions, rotary.rope_init_fn(rotary.config, hidden.device, seq_len=long_from + 1)[0])
        reach = torch.tensor(np.repeat(ends, np.diff([0, *ends])), dtype=torch.int64)  # each position's forward's end
        use_long = (reach > long_from)[None, :, None]
        return torch.where(use_long, long[0], short[0]), torch.where(use_long, long[1], short[1])

    def _embed(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The embedding rows of every sequence's tokens, the table read a slice at a time."""
        hidden_size = int(self.config.hidden_size)
        out = [np.empty((len(ids), hidden_size), dtype=np.float32) for ids in sequences]
        arrays = [np.asarray(ids, dtype=np.int64) for ids in sequences]
        for start, rows in iter_row_chunks(self.tensors, "model.embed_tokens.weight", int(self.config.vocab_size), VOCAB_CHUNK):
            stop = start + len(rows)
            for ids, target in zip(arrays, out):
                where = (ids >= start) & (ids < stop)
                target[where] = rows[ids[where] - start]
        return out

    def logits(self, index: int) -> np.ndarray:
        hidden = self.hidden[index]
        vocab = int(self.config.vocab_size)
        tied = bool(getattr(self.config, "tie_word_embeddings", False)) or "lm_head.weight" not in self.tensors.names()
        name = "model.embed_tokens.weight" if tied else "lm_head.weight"
        out = np.empty((hidden.shape[0], vocab), dtype=np.float32)
        for start, rows in iter_row_chunks(self.tensors, name, vocab, VOCAB_CHUNK):
            out[:, start : start + len(rows)] = hidden @ rows.T
        scaling = float(getattr(self.config, "logits_scaling", 1.0))  # Granite divides its logits
        if scaling != 1.0:
            out /= np.float32(scaling)
        cap = getattr(self.config, "final_logit_softcapping", None)  # Gemma 2 soft-caps them
        if cap:
            out = np.tanh(out / np.float32(cap)) * np.float32(cap)
        return out


def _fixed(rotary: Any, hidden: Any, positions: Any, inv_freq: Any) -> tuple[Any, Any]:
    """A rotary embedding's cos, sin at `positions` with the inverse frequencies given, whatever
    the length (LongRoPE's module would pick them from the length itself)."""
    import torch

    freqs = (inv_freq.float()[None, :, None] @ positions.float()[:, None, :]).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * rotary.attention_scaling).to(hidden.dtype), (emb.sin() * rotary.attention_scaling).to(hidden.dtype)


class WholeModelReference:
    """A PyTorch model loaded whole (fp32): each sequence's logits from one forward pass."""

    description = "transformers PyTorch model (fp32) loaded whole from the same source, teacher forcing over every position"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.sequences: list[list[int]] = []

    def run(
        self,
        sequences: Sequence[Sequence[int]],
        on_layer: Callable[[int, int], None] = lambda done, total: None,
        forward_ends: Sequence[Sequence[int]] | None = None,
    ) -> None:
        # One forward per sequence: the families this serves (optimum's fallback) have no LongRoPE switch.
        self.sequences = [list(s) for s in sequences]

    def logits(self, index: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([self.sequences[index]]), use_cache=False).logits[0].float().numpy()
