"""Each decoder family as our builder sees it: what a config says about its layers, read once.

`family_plan(config)` is the declarative part of the GroupQueryAttention builder
(export/gqa_builder.py) and of the layer-streamed reference (export/reference.py): where the
norms sit, Gemma's `(1 + w)` norms and √hidden embedding, which layers slide and which rotary
table each reads, attention scale and soft-caps, Granite's multipliers, the MLP's activation,
LongRoPE's switch point. `unsupported_reason` says why a config is refused, before any weight
is read; `rotary_tables` computes the cos/sin caches as transformers does
(../shared/FAMILIES.md has what each family needs, checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Families whose decoder layers this builder writes (../shared/FAMILIES.md has what each needs).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "granite", "smollm3", "gemma2", "gemma3_text", "phi3", "olmo2")
GEMMA_TYPES = ("gemma2", "gemma3_text")  # (1 + w) norms, √hidden embedding, norms before and after each sublayer
POST_NORM_TYPES = ("olmo2",)  # norms after each sublayer only
# Mixture-of-experts families: refused with the reason (see unsupported_reason).
MOE_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe", "phimoe", "deepseek_v2", "deepseek_v3")
# Rotary embeddings whose inverse frequencies do not depend on the sequence's length, and LongRoPE,
# whose two sets switch at a length (handled per row through position_ids).
STATIC_ROPE_TYPES = (None, "default", "linear", "llama3", "yarn")
LONG_ROPE_TYPES = ("longrope",)
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def unsupported_reason(config: Any, max_context: int) -> str | None:
    """Why this builder cannot build `config`'s model, or None if it can."""
    model_type = getattr(config, "model_type", None)
    if model_type in MOE_TYPES:
        return (
            f"{model_type} is a mixture-of-experts model, which our builder does not write: ONNX Runtime's CPU QMoE kernel "
            "(4-bit experts) took 5.4x as long per layer as MatMulNBits reading the same active weights at Qwen3-30B-A3B's "
            "shape (46 vs 8.5 ms a token, 2 cores; bench/moe_probe.py), about 0.5 tokens/s over its 48 layers"
        )
    if model_type == "gemma3":
        return "this is Gemma 3's multimodal checkpoint; export a text-only Gemma 3 (model_type gemma3_text, e.g. gemma-3-1b)"
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    head_dim = config_head_dim(config)
    if head_dim % 16:
        return f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention's rotary kernel needs that)"
    activation = _activation_name(config)
    if activation not in ACTIVATIONS:
        return f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}"
    rope_type = _rope_type(config)
    if rope_type not in STATIC_ROPE_TYPES + LONG_ROPE_TYPES:
        return f"rope scaling {rope_type!r} recomputes its frequencies from the sequence's length at every step"
    rotary_half = int(head_dim * float(getattr(config, "partial_rotary_factor", 1.0) or 1.0)) // 2
    if rotary_half % 8 or rotary_half > head_dim // 2:
        return f"a partial rotary embedding over {2 * rotary_half} of {head_dim} dimensions (GroupQueryAttention needs a multiple of 16)"
    return None


def _activation_name(config: Any) -> str:
    return str(getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu"))


def _rope_type(config: Any) -> str | None:
    rope = getattr(config, "rope_scaling", None) or {}
    return rope.get("rope_type", rope.get("type"))


@dataclass(frozen=True)
class LayerPlan:
    """What one decoder layer of the family needs beyond llama's."""

    # Norm weights before attention, after attention, before the MLP, after the MLP (None: none there).
    norms: tuple[str | None, str | None, str | None, str | None]
    rotary: str | None  # which cos/sin caches ("global", "local"); None: no rotary embedding
    window: int  # GroupQueryAttention's local_window_size (keys including the current one), 0: all


@dataclass(frozen=True)
class FamilyPlan:
    """A family's features, read from its config: the one layer loop builds every family from it."""

    layers: tuple[LayerPlan, ...]
    norm_offset: float = 0.0  # Gemma: the norm scales by 1 + w
    embedding_scale: float = 1.0  # Gemma: √hidden; Granite: embedding_multiplier
    residual_multiplier: float = 1.0  # Granite: each sublayer's output
    attention_scale: float = 1.0
    attention_softcap: float = 0.0  # Gemma 2: cap · tanh(scores / cap)
    logits_scaling: float = 1.0  # Granite divides its logits
    final_softcap: float = 0.0  # Gemma 2
    activation: str = "silu"  # the MLP gate's: silu or gelu_tanh
    long_rope_from: int = 0  # LongRoPE: a sequence longer than this uses the long factors; 0: no switch


def family_plan(config: Any) -> FamilyPlan:
    """The family's features as the builder and the reference read them."""
    model_type = config.model_type
    layers = int(config.num_hidden_layers)
    head_dim = config_head_dim(config)
    layer_types = getattr(config, "layer_types", None)
    window = int(getattr(config, "sliding_window", None) or 0)
    max_context = int(getattr(config, "max_position_embeddings", 0) or 0)
    no_rope = getattr(config, "no_rope_layers", None)  # SmolLM3: 1 = the layer uses the rotary embedding
    plans = []
    for i in range(layers):
        p = f"model.layers.{i}"
        norms: tuple[str | None, str | None, str | None, str | None]
        if model_type in GEMMA_TYPES:
            norms = (f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight", f"{p}.pre_feedforward_layernorm.weight", f"{p}.post_feedforward_layernorm.weight")
        elif model_type in POST_NORM_TYPES:
            norms = (None, f"{p}.post_attention_layernorm.weight", None, f"{p}.post_feedforward_layernorm.weight")
        else:
            norms = (f"{p}.input_layernorm.weight", None, f"{p}.post_attention_layernorm.weight", None)
        # Which layers slide: layer_types where the config has them (Qwen2 slides only from
        # max_window_layers on, Gemma alternates); Mistral and Phi-3 slide everywhere when set.
        if layer_types is not None:
            sliding = layer_types[i] == "sliding_attention"
        else:
            sliding = model_type in ("mistral", "phi3") and window > 0
        rotary: str | None = "global"
        if no_rope is not None and not no_rope[i]:
            rotary = None
        elif model_type == "gemma3_text" and sliding:
            rotary = "local"
        plans.append(LayerPlan(norms, rotary, window if sliding and window else 0))
    query_scalar = getattr(config, "query_pre_attn_scalar", None)
    if query_scalar is not None and model_type in GEMMA_TYPES:
        attention_scale = float(query_scalar) ** -0.5
    else:
        attention_scale = float(getattr(config, "attention_multiplier", head_dim**-0.5))
    embedding_scale = float(np.float32(config.hidden_size**0.5)) if model_type in GEMMA_TYPES else float(getattr(config, "embedding_multiplier", 1.0))
    long_from = 0
    if _rope_type(config) in LONG_ROPE_TYPES:
        long_from = int(getattr(config, "original_max_position_embeddings", None) or max_context)
    return FamilyPlan(
        layers=tuple(plans),
        norm_offset=1.0 if model_type in GEMMA_TYPES else 0.0,
        embedding_scale=embedding_scale,
        residual_multiplier=float(getattr(config, "residual_multiplier", 1.0)),
        attention_scale=attention_scale,
        attention_softcap=float(getattr(config, "attn_logit_softcapping", None) or 0.0),
        logits_scaling=float(getattr(config, "logits_scaling", 1.0)),
        final_softcap=float(getattr(config, "final_logit_softcapping", None) or 0.0),
        activation=ACTIVATIONS.get(_activation_name(config), "silu"),
        long_rope_from=long_from,
    )


def config_head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def rotary_tables(config: Any, max_context: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cos and sin caches [rows, rotary_dim / 2] (fp32, attention scaling applied) of each rotary
    embedding the model has, as transformers computes them for `config`: "global", and
    Gemma 3's "local" one (its own base, none of the global scaling).

    LongRoPE (Phi-3): rows 0..max_context-1 hold the short factors and rows max_context.. the
    long ones, when a sequence can outgrow `original_max_position_embeddings` within
    `max_context`; position_ids pick the half (long_rope_positions)."""
    import copy

    plan = family_plan(config)
    tables = {"global": _cos_sin(config, max_context)}
    if 0 < plan.long_rope_from < max_context:
        long = _cos_sin(config, max_context, seq_len=plan.long_rope_from + 1)
        tables["global"] = (np.concatenate([tables["global"][0], long[0]]), np.concatenate([tables["global"][1], long[1]]))
    if any(layer.rotary == "local" for layer in plan.layers):
        local = copy.deepcopy(config)
        local.rope_theta = config.rope_local_base_freq
        local.rope_scaling = {"rope_type": "default"}
        tables["local"] = _cos_sin(local, max_context)
    return tables


def _cos_sin(config: Any, rows: int, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = _rope_type(config) or "default"
    kwargs = {"seq_len": seq_len} if seq_len is not None else {}
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), **kwargs)
    angles = np.outer(np.arange(rows, dtype=np.float64), inv_freq.detach().double().cpu().numpy())
    return (np.cos(angles) * scaling).astype(np.float32), (np.sin(angles) * scaling).astype(np.float32)
