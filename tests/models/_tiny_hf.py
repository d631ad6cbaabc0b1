"""Tiny random transformers checkpoints, one per supported family, written with save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import torch

transformers = __import__("pytest").importorskip("transformers")

VOCAB = 160
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def tiny_configs() -> dict[str, object]:
    """name -> transformers config; covers tied/untied, GQA/MHA, every family feature."""
    t = transformers
    return {
        "llama3_1": t.LlamaConfig(**_COMMON, rope_scaling=_LLAMA31_ROPE, rope_theta=500_000.0),
        "llama_tied": t.LlamaConfig(
            **{**_COMMON, "num_key_value_heads": 4}, tie_word_embeddings=True
        ),
        "mistral": t.MistralConfig(**_COMMON, sliding_window=16),
        # Mistral Nemo / Small 3.x: head_dim (32) != hidden / heads (16), no sliding window
        "mistral_nemo": t.MistralConfig(**_COMMON, head_dim=32, sliding_window=None),
        # Ministral 3: yarn (mscale / mscale_all_dim) and the Llama-4-style query scaling over
        # original_max_position_embeddings=8 (so it acts within the test's 37 tokens)
        "ministral3": t.Ministral3Config(
            **{**_COMMON, "max_position_embeddings": 128},
            head_dim=16,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1_000_000.0,
                "factor": 16.0,
                "original_max_position_embeddings": 8,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "llama_4_scaling_beta": 0.1,
            },
        ),
        "gemma": t.GemmaConfig(**{**_COMMON, "num_key_value_heads": 1}, head_dim=32),
        "gemma2": t.Gemma2Config(
            **{**_COMMON, "num_hidden_layers": 4},
            head_dim=16,
            sliding_window=12,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
        "phi3": t.Phi3Config(**_COMMON),
        # Phi-3 128k / Phi-3.5: longrope (37 test tokens > original 16: the long factors act)
        "phi3_longrope": t.Phi3Config(
            **_COMMON,
            original_max_position_embeddings=16,
            rope_scaling={
                "type": "longrope",
                "long_factor": [1.0 + 0.7 * i for i in range(8)],
                "short_factor": [1.0 + 0.1 * i for i in range(8)],
            },
        ),
        # Phi-4-mini: partial rotary (12 of 16 features) + longrope, tied embeddings
        "phi4_mini": t.Phi3Config(
            **{**_COMMON, "num_attention_heads": 4, "hidden_size": 64},
            partial_rotary_factor=0.75,
            original_max_position_embeddings=16,
            tie_word_embeddings=True,
            rope_scaling={
                "type": "longrope",
                "long_factor": [1.5 + 0.5 * i for i in range(6)],
                "short_factor": [1.0] * 6,
            },
        ),
        # dynamic NTK past max_position_embeddings=16
        "llama_dynamic": t.LlamaConfig(
            **{**_COMMON, "max_position_embeddings": 16},
            rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10_000.0},
        ),
        # Gemma 3: 5 sliding : 1 global, local / global RoPE bases (global linearly scaled),
        # QK-norm, sandwich norms, query scalar
        "gemma3": t.Gemma3TextConfig(
            **{**_COMMON, "num_hidden_layers": 6},
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=24,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            },
        ),
        # SmolLM3: every 4th layer without RoPE
        "smollm3": t.SmolLM3Config(**{**_COMMON, "num_hidden_layers": 4}),
        # OLMo 2: post-norms only, QK-norm over all heads
        "olmo2": t.Olmo2Config(**_COMMON),
        # OLMo 3: OLMo 2 + three sliding-window layers to one global; YaRN on the global
        # layers only (37 test tokens > original 16 and > window 8)
        "olmo3": t.Olmo3Config(
            **{**_COMMON, "num_hidden_layers": 4},
            sliding_window=8,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 500_000.0},
                "full_attention": {
                    "rope_type": "yarn",
                    "rope_theta": 500_000.0,
                    "factor": 8.0,
                    "original_max_position_embeddings": 16,
                    "attention_factor": 1.2079441541679836,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                },
            },
        ),
        # Granite 4.0 dense (granite-4.0-micro / 1b / 350m): the granitemoehybrid architecture
        # with attention in every layer, no experts, RoPE; fused shared_mlp projections
        "granite4": t.GraniteMoeHybridConfig(
            **_COMMON,
            shared_intermediate_size=80,
            num_local_experts=0,
            num_experts_per_tok=0,
            layer_types=["attention"] * 2,
            position_embedding_type="rope",
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=0.0625,
            logits_scaling=10.0,
            tie_word_embeddings=True,
        ),
        # Granite: embedding / residual / attention multipliers, logits scaling, tied
        "granite": t.GraniteConfig(
            **_COMMON,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=0.0625,
            logits_scaling=8.0,
            tie_word_embeddings=True,
        ),
        "qwen2": t.Qwen2Config(**_COMMON, tie_word_embeddings=True),
        "qwen2_untied": t.Qwen2Config(**_COMMON, tie_word_embeddings=False),
        "qwen3": t.Qwen3Config(**_COMMON, head_dim=32, tie_word_embeddings=False),
        # mixtures of experts: layer 2 of qwen3_moe is dense (mlp_only_layers)
        "qwen3_moe": t.Qwen3MoeConfig(
            **{**_COMMON, "num_hidden_layers": 3},
            head_dim=16,
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            mlp_only_layers=[2],
        ),
        "mixtral": t.MixtralConfig(
            **{**_COMMON, "intermediate_size": 48},
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=16,
        ),
        # Llama 4 text: chunked attention on RoPE layers, a NoPE layer (temperature tuning with a
        # small floor_scale so it acts), QK-norm, sigmoid top-1 routing with a shared expert,
        # dense / MoE layers interleaved
        "llama4": t.Llama4TextConfig(
            **{**_COMMON, "num_hidden_layers": 4, "intermediate_size": 32},
            head_dim=16,
            intermediate_size_mlp=96,
            num_local_experts=4,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
            no_rope_layers=[1, 1, 1, 0],
            attention_chunk_size=8,
            floor_scale=4,
            attn_scale=0.1,
        ),
        # gpt-oss: sinks, alternating sliding window, yarn RoPE, biased experts, clamped SwiGLU
        "gpt_oss": t.GptOssConfig(
            **{**_COMMON, "num_hidden_layers": 4, "intermediate_size": 32},
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=12,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 16,
            },
        ),
    }


def make_checkpoint(name: str, directory: Path, std: float = 0.1):
    """Write a random model to ``directory``; return the (eval, fp32, eager) transformers model."""
    cfg = tiny_configs()[name]
    cfg._attn_implementation = "eager"
    name_ = type(cfg).__name__.replace("Config", "ForCausalLM").replace("Llama4Text", "Llama4")
    name_ = name_.replace("Gemma3Text", "Gemma3")
    cls = getattr(transformers, name_)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.save_pretrained(directory)
    return model


def read_checkpoint(directory: Path) -> tuple[dict, dict]:
    """(config.json dict, state dict) exactly as written to disk."""
    from safetensors.torch import load_file

    config = json.loads((directory / "config.json").read_text())
    return config, load_file(str(directory / "model.safetensors"))
