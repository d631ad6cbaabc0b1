"""Sizes of the current dense families (Gemma 3, Phi-3.5 / Phi-3 128k / Phi-4-mini, SmolLM3, OLMo 2 / 3,
Granite 3.3 / 4.0 dense, Mistral Nemo / Small 3.x, Ministral 3) as data.

Numbers follow each released ``config.json`` (``tests/models/test_dense_specs.py`` builds the
transformers model from the same values on the meta device and compares parameter counts).
Merged into ``tunesmith.models._specs.SPECS``.
"""

from __future__ import annotations

from tunesmith.models._longrope_tables import (
    PHI3_5_MINI_LONG,
    PHI3_5_MINI_SHORT,
    PHI3_MINI_128K_LONG,
    PHI3_MINI_128K_SHORT,
    PHI4_MINI_LONG,
    PHI4_MINI_SHORT,
)
from tunesmith.models.spec import FULL, SLIDING, ModelSpec, RopeScaling

__all__ = ["DENSE_SPECS", "gemma3_layer_types", "olmo3_layer_types", "smollm3_nope_layers"]


def gemma3_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's interleave: five sliding-window layers, then one global layer."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))


def olmo3_layer_types(num_layers: int, pattern: int = 4) -> tuple[str, ...]:
    """OLMo 3's interleave: three sliding-window layers, then one global layer."""
    return gemma3_layer_types(num_layers, pattern)


def smollm3_nope_layers(num_layers: int, interval: int = 4) -> tuple[int, ...]:
    """SmolLM3's NoPE layers: every ``interval``-th layer (``no_rope_layer_interval``)."""
    return tuple(i for i in range(num_layers) if (i + 1) % interval == 0)


def _gemma3(n_layers: int, **kw: object) -> ModelSpec:
    base: dict = dict(
        family="GEMMA3",
        vocab_size=262_208,
        num_layers=n_layers,
        head_dim=256,
        max_seq_len=131_072,
        norm_eps=1e-6,
        norm_offset=True,
        activation="gelu_tanh",
        tie_embeddings=True,
        embed_scale=True,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        layer_types=gemma3_layer_types(n_layers),
        qk_norm=True,
        post_norms=True,
        rope_base=1_000_000.0,
        rope_scaling=RopeScaling(factor=8.0, rope_type="linear"),
        local_rope_base=10_000.0,
    )
    return ModelSpec(**{**base, **kw})


def _olmo2(**kw: object) -> ModelSpec:
    base: dict = dict(
        family="OLMO2",
        vocab_size=100_352,
        max_seq_len=4096,
        norm_eps=1e-6,
        rope_base=500_000.0,
        qk_norm=True,
        post_norms=True,
        pre_norms=False,
        qk_norm_across_heads=True,
        norm_scale_fp32=True,
    )
    return ModelSpec(**{**base, **kw})


def _olmo3(n_layers: int, **kw: object) -> ModelSpec:
    """OLMo 2's decoder with a 4096-token window in three of four layers and YaRN (x8 from the
    8192-token pretraining context) on the global layers only."""
    base: dict = dict(
        family="OLMO3",
        vocab_size=100_278,
        num_layers=n_layers,
        max_seq_len=65_536,
        norm_eps=1e-6,
        rope_base=500_000.0,
        rope_scaling=RopeScaling(
            factor=8.0,
            original_max_position_embeddings=8192,
            rope_type="yarn",
            beta_fast=32.0,
            beta_slow=1.0,
            truncate=True,
            attention_factor=1.2079441541679836,
        ),
        local_rope_base=500_000.0,
        sliding_window=4096,
        layer_types=olmo3_layer_types(n_layers),
        qk_norm=True,
        post_norms=True,
        pre_norms=False,
        qk_norm_across_heads=True,
        norm_scale_fp32=True,
    )
    return ModelSpec(**{**base, **kw})


def _granite4(**kw: object) -> ModelSpec:
    """Granite 4.0 dense (``granitemoehybrid``, attention in every layer): Granite 3's decoder
    with the 100k vocabulary."""
    base: dict = dict(
        family="GRANITE4",
        vocab_size=100_352,
        max_seq_len=131_072,
        norm_eps=1e-5,
        rope_base=10_000_000.0,
        tie_embeddings=True,
        embed_multiplier=12.0,
        residual_multiplier=0.22,
    )
    return ModelSpec(**{**base, **kw})


def _granite3(**kw: object) -> ModelSpec:
    base: dict = dict(
        family="GRANITE",
        vocab_size=49_159,
        num_layers=40,
        num_heads=32,
        num_kv_heads=8,
        max_seq_len=131_072,
        norm_eps=1e-5,
        rope_base=10_000_000.0,
        tie_embeddings=True,
        embed_multiplier=12.0,
        residual_multiplier=0.22,
    )
    return ModelSpec(**{**base, **kw})


def _mistral_tekken(**kw: object) -> ModelSpec:
    """Mistral's Tekken-vocabulary decoders (Nemo, Small 3.x, Ministral 3): 32 heads of 128,
    8 kv heads, no sliding window."""
    base: dict = dict(
        family="MISTRAL",
        vocab_size=131_072,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        norm_eps=1e-5,
    )
    return ModelSpec(**{**base, **kw})


def _ministral3(**kw: object) -> ModelSpec:
    """Ministral 3 (2512) text decoders: yarn x16 over 16k, Llama-4-style query scaling."""
    base: dict = dict(
        max_seq_len=262_144,
        rope_base=1_000_000.0,
        rope_scaling=RopeScaling(
            factor=16.0,
            original_max_position_embeddings=16_384,
            rope_type="yarn",
            beta_fast=32.0,
            beta_slow=1.0,
            attention_factor=1.0,  # mscale / mscale_all_dim = 1 / 1
        ),
        query_log_scaling=(0.1, 16_384.0),
    )
    return _mistral_tekken(**{**base, **kw})


DENSE_SPECS: dict[str, ModelSpec] = {
    # Mistral Nemo 12B (Base / Instruct 2407): head_dim 128 != 5120 / 32
    "mistral_nemo_12b": _mistral_tekken(
        num_layers=40,
        embed_dim=5120,
        intermediate_dim=14_336,
        max_seq_len=1_024_000,
        rope_base=1_000_000.0,
    ),
    # Mistral Small 3 24B (2501, text-only checkpoint)
    "mistral_small_24b": _mistral_tekken(
        num_layers=40,
        embed_dim=5120,
        intermediate_dim=32_768,
        max_seq_len=32_768,
        rope_base=100_000_000.0,
    ),
    # Mistral Small 3.1 / 3.2 24B (2503 / 2506): the text decoder of the multimodal release
    # (Small 3 with rope_theta 1e9 and 128k positions)
    "mistral_small_3_1_24b": _mistral_tekken(
        num_layers=40,
        embed_dim=5120,
        intermediate_dim=32_768,
        max_seq_len=131_072,
        rope_base=1_000_000_000.0,
    ),
    # Ministral 3 (3B / 8B / 14B 2512): text decoders of the multimodal releases
    "ministral3_3b": _ministral3(
        num_layers=26, embed_dim=3072, intermediate_dim=9216, tie_embeddings=True
    ),
    "ministral3_8b": _ministral3(num_layers=34, embed_dim=4096, intermediate_dim=14_336),
    "ministral3_14b": _ministral3(
        num_layers=40, embed_dim=5120, intermediate_dim=16_384, rope_base=1_000_000_000.0
    ),
    # Gemma 3 text decoders (1B is text-only: 32k context, no RoPE scaling, window 512)
    "gemma3_1b": _gemma3(
        26,
        vocab_size=262_144,
        num_heads=4,
        num_kv_heads=1,
        embed_dim=1152,
        intermediate_dim=6912,
        max_seq_len=32_768,
        sliding_window=512,
        rope_scaling=None,
    ),
    "gemma3_4b": _gemma3(34, num_heads=8, num_kv_heads=4, embed_dim=2560, intermediate_dim=10240),
    "gemma3_12b": _gemma3(48, num_heads=16, num_kv_heads=8, embed_dim=3840, intermediate_dim=15360),
    "gemma3_27b": _gemma3(
        62,
        num_heads=32,
        num_kv_heads=16,
        head_dim=128,
        embed_dim=5376,
        intermediate_dim=21504,
        query_pre_attn_scalar=168,
    ),
    # Phi-3.5 mini: Phi-3 mini with 128k context through LongRoPE
    "phi3_5_mini": ModelSpec(
        family="PHI3_MINI",
        vocab_size=32_064,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        embed_dim=3072,
        intermediate_dim=8192,
        max_seq_len=131_072,
        norm_eps=1e-5,
        sliding_window=262_144,  # as released: longer than the context, so never binding
        rope_scaling=RopeScaling(
            factor=131_072 / 4096,
            original_max_position_embeddings=4096,
            rope_type="longrope",
            long_factor=PHI3_5_MINI_LONG,
            short_factor=PHI3_5_MINI_SHORT,
        ),
    ),
    # SmolLM3 (Llama architecture, every 4th layer without RoPE)
    "smollm3_3b": ModelSpec(
        family="SMOLLM3",
        vocab_size=128_256,
        num_layers=36,
        num_heads=16,
        num_kv_heads=4,
        embed_dim=2048,
        intermediate_dim=11008,
        max_seq_len=65_536,
        norm_eps=1e-6,
        rope_base=5_000_000.0,
        tie_embeddings=True,
        nope_layers=smollm3_nope_layers(36),
    ),
    # OLMo 2 (November 2024 release)
    "olmo2_7b": _olmo2(
        num_layers=32, num_heads=32, num_kv_heads=32, embed_dim=4096, intermediate_dim=11008
    ),
    "olmo2_13b": _olmo2(
        num_layers=40, num_heads=40, num_kv_heads=40, embed_dim=5120, intermediate_dim=13824
    ),
    # OLMo 3 (November 2025; Instruct / Think / Base share the architecture; 32B: GQA 5:1)
    "olmo3_7b": _olmo3(32, num_heads=32, num_kv_heads=32, embed_dim=4096, intermediate_dim=11008),
    "olmo3_32b": _olmo3(64, num_heads=40, num_kv_heads=8, embed_dim=5120, intermediate_dim=27648),
    # Granite 4.0 dense (the H models are hybrid Mamba-2: refused by build_from_hf)
    "granite4_micro": _granite4(
        num_layers=40,
        num_heads=40,
        num_kv_heads=8,
        embed_dim=2560,
        intermediate_dim=8192,
        attn_scale=0.015625,
        logits_divisor=10.0,
    ),
    "granite4_1b": _granite4(
        num_layers=40,
        num_heads=16,
        num_kv_heads=4,
        embed_dim=2048,
        intermediate_dim=4096,
        attn_scale=0.0078125,
        logits_divisor=8.0,
    ),
    "granite4_350m": _granite4(
        num_layers=28,
        num_heads=16,
        num_kv_heads=4,
        embed_dim=1024,
        intermediate_dim=2048,
        residual_multiplier=0.263,
        attn_scale=0.015625,
        logits_divisor=4.0,
    ),
    # Granite 3.3 (base and instruct share the architecture)
    "granite3_3_2b": _granite3(
        embed_dim=2048, intermediate_dim=8192, attn_scale=0.015625, logits_divisor=8.0
    ),
    "granite3_3_8b": _granite3(
        embed_dim=4096, intermediate_dim=12800, attn_scale=0.0078125, logits_divisor=16.0
    ),
    # Phi-3 mini 128k (Phi-3 mini + LongRoPE; the June 2024 revision of
    # microsoft/Phi-3-mini-128k-instruct; its factors: see _longrope_tables)
    "phi3_mini_128k": ModelSpec(
        family="PHI3_MINI",
        vocab_size=32_064,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        embed_dim=3072,
        intermediate_dim=8192,
        max_seq_len=131_072,
        norm_eps=1e-5,
        sliding_window=262_144,  # as released: longer than the context, so never binding
        rope_scaling=RopeScaling(
            factor=131_072 / 4096,
            original_max_position_embeddings=4096,
            rope_type="longrope",
            long_factor=PHI3_MINI_128K_LONG,
            short_factor=PHI3_MINI_128K_SHORT,
        ),
    ),
    # Phi-4-mini (3.8B): GQA, partial rotary 0.75, LongRoPE, o200k vocabulary, tied
    "phi4_mini": ModelSpec(
        family="PHI3_MINI",
        vocab_size=200_064,
        num_layers=32,
        num_heads=24,
        num_kv_heads=8,
        embed_dim=3072,
        intermediate_dim=8192,
        max_seq_len=131_072,
        norm_eps=1e-5,
        tie_embeddings=True,
        sliding_window=262_144,
        rotary_dim=96,
        rope_scaling=RopeScaling(
            factor=131_072 / 4096,
            original_max_position_embeddings=4096,
            rope_type="longrope",
            long_factor=PHI4_MINI_LONG,
            short_factor=PHI4_MINI_SHORT,
        ),
    ),
}
