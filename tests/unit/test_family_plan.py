"""The builder's reading of each family's config (no weights): which layers slide, which rotary
embedding each takes, the scales and caps, and what it refuses and why."""

from __future__ import annotations

import math

import pytest

from export.families import family_plan, rotary_tables, unsupported_reason

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def config(model_type: str, **fields):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**SMALL, **fields})


def test_gemma2_slides_on_even_layers_with_its_scales_and_caps():
    plan = family_plan(config("gemma2", sliding_window=32, query_pre_attn_scalar=256))
    assert [layer.window for layer in plan.layers] == [32, 0, 32, 0]
    assert plan.norm_offset == 1.0 and plan.embedding_scale == pytest.approx(8.0) and plan.attention_scale == 256**-0.5
    assert plan.attention_softcap == 50.0 and plan.final_softcap == 30.0 and plan.activation == "gelu_tanh"
    assert plan.layers[0].norms[1].endswith("post_attention_layernorm.weight") and plan.layers[0].norms[2].endswith("pre_feedforward_layernorm.weight")


def test_gemma3_local_layers_take_the_local_rotary_base_without_the_global_scaling():
    c = config("gemma3_text", sliding_window=32, layer_types=["sliding_attention"] * 3 + ["full_attention"],
               rope_scaling={"rope_type": "linear", "factor": 8.0}, rope_local_base_freq=10000.0, rope_theta=1000000.0)  # fmt: skip
    plan = family_plan(c)
    assert [layer.rotary for layer in plan.layers] == ["local", "local", "local", "global"]
    tables = rotary_tables(c, 64)
    # Position 1's first frequency is 1 radian in both (inv_freq[0] = 1), but the global one is divided by 8.
    assert tables["local"][0][1, 0] == pytest.approx(math.cos(1.0))
    assert tables["global"][0][1, 0] == pytest.approx(math.cos(1.0 / 8))


def test_olmo2_normalizes_after_each_sublayer_only():
    plan = family_plan(config("olmo2"))
    assert plan.layers[0].norms[0] is None and plan.layers[0].norms[2] is None
    assert plan.layers[0].norms[1].endswith("post_attention_layernorm.weight") and plan.layers[0].norms[3].endswith("post_feedforward_layernorm.weight")


def test_qwen2_slides_only_from_max_window_layers_when_asked():
    assert [layer.window for layer in family_plan(config("qwen2", sliding_window=16)).layers] == [0, 0, 0, 0]
    sliding = config("qwen2", sliding_window=16, use_sliding_window=True, max_window_layers=2)
    assert [layer.window for layer in family_plan(sliding).layers] == [0, 0, 16, 16]


def test_long_rope_doubles_the_caches_only_when_the_context_passes_the_switch():
    c = config("phi3", original_max_position_embeddings=32, max_position_embeddings=128,
               rope_scaling={"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8})  # fmt: skip
    assert family_plan(c).long_rope_from == 32
    assert rotary_tables(c, 64)["global"][0].shape == (128, 8)  # short rows, then long rows
    assert rotary_tables(c, 32)["global"][0].shape == (32, 8)  # never past the switch: the short factors only


@pytest.mark.parametrize(
    ("model_type", "fields", "reason"),
    [
        ("qwen3_moe", {}, "mixture-of-experts"),
        ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "recomputes its frequencies"),
        ("phi3", {"hidden_size": 256, "head_dim": 64, "partial_rotary_factor": 0.4}, "partial rotary embedding over 24 of 64"),
        ("llama", {"hidden_act": "relu"}, "activation 'relu'"),
        ("gpt2", {}, "is not one of"),
    ],
)
def test_what_the_builder_refuses_says_why(model_type, fields, reason):
    from transformers import GPT2Config

    c = config(model_type, **fields) if model_type != "gpt2" else GPT2Config()
    assert reason in (unsupported_reason(c, 4096) or "")


def test_phi4_minis_partial_rotary_is_built():
    assert unsupported_reason(config("phi3", hidden_size=3072, num_attention_heads=24, head_dim=128, partial_rotary_factor=0.75), 4096) is None
