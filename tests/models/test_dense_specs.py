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
