"""Sizes of the mixture-of-experts families (Llama 4 text decoders, Qwen3-MoE, Mixtral,
gpt-oss) as data, keyed by torchtune's builder names.

Numbers follow each released ``config.json``. Merged into ``tunesmith.models._specs.SPECS``.
"""

from __future__ import annotations

from tunesmith.models._hf_config import spec_from_hf_config
from tunesmith.models.spec import ModelSpec, RopeScaling, alternating_sliding

__all__ = ["MOE_SPECS"]

# Llama 4 text decoders, as their published config.json text_config (every 4th layer NoPE,
# chunked attention elsewhere, QK-norm in Scout, one routed expert + a shared expert per MoE
# layer); the vision encoder is in _vision_specs
_LLAMA4_TEXT = dict(
    model_type="llama4_text",
    architectures=["Llama4ForCausalLM"],
    hidden_size=5120,
    intermediate_size=8192,
    intermediate_size_mlp=16384,
    num_hidden_layers=48,
    num_attention_heads=40,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=202048,
    num_experts_per_tok=1,
    attention_chunk_size=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    use_qk_norm=True,
    tie_word_embeddings=False,
    no_rope_layers=[int((i + 1) % 4 != 0) for i in range(48)],
    hidden_act="silu",
    attn_temperature_tuning=True,
    floor_scale=8192,
    attn_scale=0.1,
)
_LLAMA4_SCOUT = dict(
    _LLAMA4_TEXT,
    num_local_experts=16,
    interleave_moe_layer_step=1,
    max_position_embeddings=10485760,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 16.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    },
)
_LLAMA4_MAVERICK = dict(
    _LLAMA4_TEXT,
    use_qk_norm=False,  # as released (and torchtune's llama4_maverick_17b_128e): no QK-norm
    num_local_experts=128,
    interleave_moe_layer_step=2,
    max_position_embeddings=1048576,
    rope_scaling=None,
)


def _qwen3_moe(**kw: object) -> ModelSpec:
    base: dict = dict(
        family="QWEN3_MOE",
        vocab_size=151_936,
        head_dim=128,
        num_kv_heads=4,
        norm_eps=1e-6,
        rope_base=1_000_000.0,
        qk_norm=True,
        max_seq_len=40_960,
        num_experts=128,
        experts_per_token=8,
        router_norm_topk=True,
    )
    return ModelSpec(**{**base, **kw})


def _mixtral(**kw: object) -> ModelSpec:
    base: dict = dict(
        family="MIXTRAL",
        vocab_size=32_000,
        num_kv_heads=8,
        rope_base=1_000_000.0,
        norm_eps=1e-5,
        num_experts=8,
        experts_per_token=2,
    )
    return ModelSpec(**{**base, **kw})


_GPT_OSS_ROPE = RopeScaling(
    factor=32.0,
    original_max_position_embeddings=4096,
    rope_type="yarn",
    beta_fast=32.0,
    beta_slow=1.0,
    truncate=False,
)


def _gpt_oss(n_layers: int, n_experts: int) -> ModelSpec:
    return ModelSpec(
        family="GPT_OSS",
        vocab_size=201_088,
        num_layers=n_layers,
        num_heads=64,
        num_kv_heads=8,
        head_dim=64,
        embed_dim=2880,
        intermediate_dim=2880,
        moe_intermediate_dim=2880,
        max_seq_len=131_072,
        rope_base=150_000.0,
        rope_scaling=_GPT_OSS_ROPE,
        norm_eps=1e-5,
        qkv_bias=True,
        out_bias=True,
        attn_sinks=True,
        sliding_window=128,
        layer_types=alternating_sliding(n_layers),
        num_experts=n_experts,
        experts_per_token=4,
        router_bias=True,
        expert_bias=True,
        swiglu_limit=7.0,
    )


MOE_SPECS: dict[str, ModelSpec] = {
    # Llama 4 text decoders (with the vision encoder: _vision_specs, models/llama4)
    "llama4_scout_17b_16e": spec_from_hf_config(_LLAMA4_SCOUT),
    "llama4_maverick_17b_128e": spec_from_hf_config(_LLAMA4_MAVERICK),
    # Qwen3-MoE (every layer routed; dense intermediate_dim unused by the released sizes)
    "qwen3_moe_30b_a3b": _qwen3_moe(
        num_layers=48,
        num_heads=32,
        embed_dim=2048,
        intermediate_dim=6144,
        moe_intermediate_dim=768,
    ),
    "qwen3_moe_235b_a22b": _qwen3_moe(
        num_layers=94,
        num_heads=64,
        embed_dim=4096,
        intermediate_dim=12288,
        moe_intermediate_dim=1536,
    ),
    # Mixtral v0.1 (expert width = intermediate_dim)
    "mixtral_8x7b": _mixtral(
        num_layers=32,
        num_heads=32,
        embed_dim=4096,
        intermediate_dim=14336,
        moe_intermediate_dim=14336,
        max_seq_len=32_768,
    ),
    "mixtral_8x22b": _mixtral(
        num_layers=56,
        num_heads=48,
        embed_dim=6144,
        intermediate_dim=16384,
        moe_intermediate_dim=16384,
        max_seq_len=65_536,
    ),
    # gpt-oss (bf16 weights; the released MXFP4 checkpoints are refused on load)
    "gpt_oss_20b": _gpt_oss(24, 32),
    "gpt_oss_120b": _gpt_oss(36, 128),
}
