"""Released Hugging Face config.json files (transformers 4.x layout) map to our size specs."""

from __future__ import annotations

import pytest

from tunesmith.models import SPECS, spec_from_hf_config
from tunesmith.models.spec import SLIDING

# Verbatim architecture fields of the released config.json files.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "vocab_size": 128256,
}
QWEN2_5_0_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
GEMMA_2_2B = {
    "architectures": ["Gemma2ForCausalLM"],
    "attention_bias": False,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "max_position_embeddings": 8192,
    "model_type": "gemma2",
    "num_attention_heads": 8,
    "num_hidden_layers": 26,
    "num_key_value_heads": 4,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "vocab_size": 256000,
}
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

PHI_3_MINI_4K = {
    "architectures": ["Phi3ForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "max_position_embeddings": 4096,
    "model_type": "phi3",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "original_max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "sliding_window": 2047,
    "tie_word_embeddings": False,
    "vocab_size": 32064,
}
PHI_4 = {
    "architectures": ["Phi3ForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 5120,
    "intermediate_size": 17920,
    "max_position_embeddings": 16384,
    "model_type": "phi3",
    "num_attention_heads": 40,
    "num_hidden_layers": 40,
    "num_key_value_heads": 10,
    "original_max_position_embeddings": 16384,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 250000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "vocab_size": 100352,
}
MISTRAL_7B_V0_3 = {
    "architectures": ["MistralForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "vocab_size": 32768,
}
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "hidden_act": "silu",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 100000,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}


def _normalise(spec):
    return spec.replace(family="-", head_dim=spec.resolved_head_dim)


@pytest.mark.parametrize(
    "config, name",
    [
        (LLAMA_3_2_1B, "llama3_2_1b"),
        (QWEN2_5_0_5B, "qwen2_5_0_5b"),
        (GEMMA_2_2B, "gemma2_2b"),
        (QWEN3_0_6B, "qwen3_0_6b_instruct"),
        (PHI_3_MINI_4K, "phi3_mini"),
        (PHI_4, "phi4_14b"),
        (SMOLLM2_135M, "smollm2_135m"),
    ],
)
def test_released_configs_match_specs(config, name):
    assert _normalise(spec_from_hf_config(config)) == _normalise(SPECS[name])


def test_mistral_v0_3_is_mistral_7b_with_new_vocab_and_theta():
    spec = spec_from_hf_config(MISTRAL_7B_V0_3)
    expected = SPECS["mistral_7b"].replace(vocab_size=32768, rope_base=1_000_000.0)
    assert _normalise(spec) == _normalise(expected)


def test_gemma2_v4_config_alternates_sliding_layers():
    spec = spec_from_hf_config(GEMMA_2_2B)
    assert spec.layer_window(0) == 4096 and spec.layer_window(1) is None
    assert spec.layer_types[2] == SLIDING


def test_unsupported_configs_fail_clearly():
    with pytest.raises(ValueError, match="model_type 'bert'"):
        spec_from_hf_config({"model_type": "bert"})
    with pytest.raises(ValueError, match="rope type 'mrope_xl' is not supported"):
        spec_from_hf_config(
            {**LLAMA_3_2_1B, "rope_scaling": {"rope_type": "mrope_xl", "factor": 4.0}}
        )
    with pytest.raises(ValueError, match="longrope needs long_factor and short_factor"):
        spec_from_hf_config(
            {**LLAMA_3_2_1B, "rope_scaling": {"rope_type": "longrope", "factor": 4.0}}
        )
    with pytest.raises(ValueError, match="attention_bias"):
        spec_from_hf_config({**LLAMA_3_2_1B, "attention_bias": True})
