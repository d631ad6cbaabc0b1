"""Dense family sizes: each spec equals what its released ``config.json`` values read into, and
builds (meta device) the parameter count of transformers' model from those values.

The config values below are the released checkpoints' (``config.json`` on the Hugging Face
hub); the counts are checked against transformers' own model built from them, and against
the model cards' published totals where those are exact.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from tunesmith.models import SPECS, spec_from_hf_config
from tunesmith.models._gemma4_specs import GEMMA4_CONFIGS
from tunesmith.models._longrope_tables import (
    PHI3_5_MINI_LONG,
    PHI3_5_MINI_SHORT,
    PHI3_MINI_128K_LONG,
    PHI3_MINI_128K_SHORT,
    PHI4_MINI_LONG,
)

transformers = pytest.importorskip("transformers")

_GEMMA3 = dict(
    model_type="gemma3_text",
    head_dim=256,
    vocab_size=262_208,
    max_position_embeddings=131_072,
    sliding_window=1024,
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-6,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
    },
)
_OLMO2 = dict(
    model_type="olmo2",
    vocab_size=100_352,
    max_position_embeddings=4096,
    rope_theta=500_000.0,
    rms_norm_eps=1e-6,
)
#: OLMo 3's config.json (transformers 4.x layout: one rope_scaling, applied by transformers to
#: the full-attention layers only)
_OLMO3 = dict(
    model_type="olmo3",
    vocab_size=100_278,
    max_position_embeddings=65_536,
    rope_theta=500_000.0,
    rope_scaling={
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
        "attention_factor": 1.2079441541679836,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    },
    sliding_window=4096,
    rms_norm_eps=1e-6,
)
#: Granite 4.0 dense: granitemoehybrid with attention in every layer and no experts.
#: rope_theta / rms_norm_eps / tie_word_embeddings are not confirmed from the released files
#: (they leave the parameter counts unchanged); the shapes are (the totals below).
_GRANITE4 = dict(
    model_type="granitemoehybrid",
    vocab_size=100_352,
    max_position_embeddings=131_072,
    rms_norm_eps=1e-5,
    rope_theta=10_000_000.0,
    tie_word_embeddings=True,
    num_local_experts=0,
    num_experts_per_tok=0,
    position_embedding_type="rope",
    embedding_multiplier=12.0,
    residual_multiplier=0.22,
)
_GRANITE = dict(
    model_type="granite",
    vocab_size=49_159,
    num_hidden_layers=40,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131_072,
    rms_norm_eps=1e-5,
    rope_theta=10_000_000.0,
    tie_word_embeddings=True,
    embedding_multiplier=12.0,
    residual_multiplier=0.22,
)

#: builder name -> the released config.json's architecture values
HF_CONFIGS: dict[str, dict] = {
    "gemma3_1b": {
        **_GEMMA3,
        "vocab_size": 262_144,
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32_768,
        "sliding_window": 512,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
    },
    "gemma3_4b": {
        **_GEMMA3,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
    "gemma3_12b": {
        **_GEMMA3,
        "hidden_size": 3840,
        "intermediate_size": 15360,
        "num_hidden_layers": 48,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
    },
    "gemma3_27b": {
        **_GEMMA3,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "num_hidden_layers": 62,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 128,
        "query_pre_attn_scalar": 168,
    },
    "phi3_5_mini": {
        "model_type": "phi3",
        "vocab_size": 32_064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 131_072,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10_000.0,
        "rope_scaling": {
            "type": "longrope",
            "long_factor": list(PHI3_5_MINI_LONG),
            "short_factor": list(PHI3_5_MINI_SHORT),
        },
        "sliding_window": 262_144,
        "tie_word_embeddings": False,
        "pad_token_id": 32_000,
    },
    "smollm3_3b": {
        "model_type": "smollm3",
        "vocab_size": 128_256,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "max_position_embeddings": 65_536,
        "rms_norm_eps": 1e-6,
        "rope_theta": 5_000_000.0,
        "no_rope_layer_interval": 4,
        "tie_word_embeddings": True,
        "pad_token_id": 128_004,
    },
    "olmo2_7b": {
        **_OLMO2,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "olmo2_13b": {
        **_OLMO2,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
    },
    "olmo3_7b": {
        **_OLMO3,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "olmo3_32b": {
        **_OLMO3,
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
    },
    "granite4_micro": {
        **_GRANITE4,
        "hidden_size": 2560,
        "intermediate_size": 8192,
        "shared_intermediate_size": 8192,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "layer_types": ["attention"] * 40,
        "attention_multiplier": 0.015625,
        "logits_scaling": 10.0,
    },
    "granite4_1b": {
        **_GRANITE4,
        "hidden_size": 2048,
        "intermediate_size": 4096,
        "shared_intermediate_size": 4096,
        "num_hidden_layers": 40,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "layer_types": ["attention"] * 40,
        "attention_multiplier": 0.0078125,
        "logits_scaling": 8.0,
    },
    "granite4_350m": {
        **_GRANITE4,
        "hidden_size": 1024,
        "intermediate_size": 2048,
        "shared_intermediate_size": 2048,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "layer_types": ["attention"] * 28,
        "residual_multiplier": 0.263,
        "attention_multiplier": 0.015625,
        "logits_scaling": 4.0,
    },
    "granite3_3_2b": {
        **_GRANITE,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "attention_multiplier": 0.015625,
        "logits_scaling": 8.0,
    },
    "granite3_3_8b": {
        **_GRANITE,
        "hidden_size": 4096,
        "intermediate_size": 12800,
        "attention_multiplier": 0.0078125,
        "logits_scaling": 16.0,
    },
}

_PHI3_128K = {
    "model_type": "phi3",
    "vocab_size": 32_064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 131_072,
    "original_max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10_000.0,
    "sliding_window": 262_144,
    "tie_word_embeddings": False,
    "pad_token_id": 32_000,
}
HF_CONFIGS |= {
    "phi3_mini_128k": {
        **_PHI3_128K,
        "rope_scaling": {
            "type": "longrope",
            "long_factor": list(PHI3_MINI_128K_LONG),
            "short_factor": list(PHI3_MINI_128K_SHORT),
        },
    },
    "phi4_mini": {
        **_PHI3_128K,
        "vocab_size": 200_064,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "partial_rotary_factor": 0.75,
        "tie_word_embeddings": True,
        "pad_token_id": 199_999,
        "rope_scaling": {
            "type": "longrope",
            "long_factor": list(PHI4_MINI_LONG),
            "short_factor": [1.0] * 48,
        },
    },
    **GEMMA4_CONFIGS,  # Gemma 4 text decoders (tests/models/test_gemma4_specs.py: totals)
}

#: model cards' / safetensors metadata's exact totals (tied embeddings counted once)
PUBLISHED = {
    "phi3_mini_128k": 3_821_079_552,
    "phi4_mini": 3_836_021_760,
    "gemma3_1b": 999_885_952,
    "smollm3_3b": 3_075_098_624,
    "olmo2_7b": 7_298_617_344,
    # safetensors index totals of allenai/Olmo-3-7B-Instruct, Olmo-3.1-32B-Instruct,
    # ibm-granite/granite-4.0-micro, -1b, -350m
    "olmo3_7b": 7_298_011_136,
    "olmo3_32b": 32_233_522_176,
    "granite4_micro": 3_402_836_480,
    "granite4_1b": 1_631_750_144,
    "granite4_350m": 352_379_904,
}


def _hf_config(name: str):
    values = dict(HF_CONFIGS[name])
    model_type = values.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **values)


def _builder(name: str):
    package = "granite3_3" if name.startswith("granite3_3") else name.split("_")[0]
    return getattr(importlib.import_module(f"tunesmith.models.{package}"), name)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_spec_is_what_the_released_config_reads_into(name):
    read = spec_from_hf_config(_hf_config(name).to_dict())
    spec = SPECS[name]
    assert read.replace(head_dim=read.resolved_head_dim) == spec.replace(
        head_dim=spec.resolved_head_dim
    )


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_parameter_count_equals_transformers_on_meta(name):
    with torch.device("meta"):
        ours = _builder(name)()
        theirs = transformers.AutoModelForCausalLM.from_config(_hf_config(name))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    if name in PUBLISHED:
        assert count == PUBLISHED[name]


def test_gemma3_transformers_4_config_layout_reads_the_same():
    """Gemma 3 checkpoints saved by transformers 4.5x carry ``rope_theta``,
    ``rope_local_base_freq``, ``rope_scaling`` and ``sliding_window_pattern`` (no
    ``layer_types`` / ``rope_parameters``)."""
    values = {k: v for k, v in HF_CONFIGS["gemma3_4b"].items() if k != "rope_parameters"}
    values |= {
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "sliding_window_pattern": 6,
        "hidden_activation": "gelu_pytorch_tanh",
    }
    assert spec_from_hf_config(values) == SPECS["gemma3_4b"].replace(head_dim=256)


def test_olmo3_config_json_layout_scales_only_the_global_layers():
    """The released config.json (``rope_scaling`` + ``rope_theta``, the 4.x layout) reads
    as transformers runs it: YaRN on the full-attention layers, plain RoPE of the same base
    on the sliding-window ones."""
    values = {k: v for k, v in HF_CONFIGS["olmo3_7b"].items()}
    spec = spec_from_hf_config(values)
    assert spec == SPECS["olmo3_7b"].replace(head_dim=128)
    assert spec.local_rope_base == 500_000.0 and spec.local_rope_scaling is None
    assert (
        spec.layer_types.count("full_attention") == 8
        and spec.layer_types[3::4] == ("full_attention",) * 8
    )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"layer_types": ["mamba"] * 5 + ["attention"] + ["mamba"] * 34}, "39 Mamba-2 layers"),
        ({"layer_types": ["linear_attention"] * 39 + ["full_attention"]}, "Mamba-2 layers"),
        ({"num_local_experts": 64, "num_experts_per_tok": 6}, "64 experts"),
    ],
)
def test_granite4_hybrid_and_moe_checkpoints_are_refused_in_one_line(overrides, needle):
    """granite-4.0-h-micro / -h-tiny / -h-small (Mamba-2 hybrids, the last two with experts)."""
    from tunesmith.config import ConfigError

    values = {**HF_CONFIGS["granite4_micro"], **overrides}
    with pytest.raises(ConfigError) as info:
        spec_from_hf_config(values)
    message = str(info.value)
    assert "\n" not in message and "granitemoehybrid" in message and needle in message


def test_granite4_without_rope_has_no_rope_in_any_layer():
    """``position_embedding_type`` other than "rope" (transformers' default: None) is NoPE."""
    values = {**HF_CONFIGS["granite4_350m"], "position_embedding_type": None}
    assert spec_from_hf_config(values).nope_layers == tuple(range(28))
    assert spec_from_hf_config(HF_CONFIGS["granite4_350m"]).nope_layers == ()


def test_granite4_mlp_lora_builds():
    """Its checkpoints fuse gate / up (shared_mlp.input_linear); the separate gate / up adapters
    are saved as one block-form PEFT adapter (tests/recipes/test_finetune_dense.py)."""
    from tunesmith.models.granite4 import lora_granite4_350m

    with torch.device("meta"):
        model = lora_granite4_350m(["q_proj", "v_proj"], apply_lora_to_mlp=True)
    assert hasattr(model.layers[0].mlp.w1, "lora_a")
