"""Every size of every family as plain data, keyed by torchtune's builder name.

Numbers follow each model's Hugging Face ``config.json`` (where torchtune's builders differ
from the released checkpoint, the checkpoint wins so its weights load).
"""

from __future__ import annotations

from tunesmith.models._dense_specs import DENSE_SPECS
from tunesmith.models._gemma4_specs import GEMMA4_SPECS
from tunesmith.models._moe_specs import MOE_SPECS
from tunesmith.models.spec import ModelSpec, RopeScaling, alternating_sliding

__all__ = ["SPECS", "get_spec"]

_LLAMA31_ROPE = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
_LLAMA32_ROPE = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0)


def _llama2(**kw: object) -> ModelSpec:
    base: dict = dict(family="LLAMA2", vocab_size=32_000, max_seq_len=4096, norm_eps=1e-5)
    return ModelSpec(**{**base, **kw})


def _code_llama2(**kw: object) -> ModelSpec:
    base: dict = dict(family="LLAMA2", vocab_size=32_016, max_seq_len=16_384, rope_base=1_000_000.0)
    return ModelSpec(**{**base, **kw})


def _llama3(**kw: object) -> ModelSpec:
    base: dict = dict(
        family="LLAMA3", vocab_size=128_256, num_kv_heads=8, rope_base=500_000.0, norm_eps=1e-5
    )
    return ModelSpec(**{**base, **kw})


def _gemma2(n_layers: int, **kw: object) -> ModelSpec:
    base: dict = dict(
        family="GEMMA2",
        vocab_size=256_000,
        num_layers=n_layers,
        max_seq_len=8192,
        norm_eps=1e-6,
        norm_offset=True,
        activation="gelu_tanh",
        tie_embeddings=True,
        embed_scale=True,
        attn_softcap=50.0,
        final_softcap=30.0,
        sliding_window=4096,
        layer_types=alternating_sliding(n_layers),
        post_norms=True,
    )
    return ModelSpec(**{**base, **kw})


def _qwen(**kw: object) -> ModelSpec:
    base: dict = dict(
        family="QWEN2", vocab_size=151_936, norm_eps=1e-6, rope_base=1_000_000.0, qkv_bias=True
    )
    return ModelSpec(**{**base, **kw})


def _qwen3(**kw: object) -> ModelSpec:
    base: dict = dict(
        family="QWEN3",
        vocab_size=151_936,
        head_dim=128,
        norm_eps=1e-6,
        rope_base=1_000_000.0,
        qk_norm=True,
    )
    return ModelSpec(**{**base, **kw})


def _smollm2(**kw: object) -> ModelSpec:
    base: dict = dict(family="LLAMA3_2", vocab_size=49_152, max_seq_len=8192, tie_embeddings=True)
    return ModelSpec(**{**base, **kw})


_L2_7 = dict(num_layers=32, num_heads=32, num_kv_heads=32, embed_dim=4096, intermediate_dim=11008)
_L2_13 = dict(num_layers=40, num_heads=40, num_kv_heads=40, embed_dim=5120, intermediate_dim=13824)
_L2_70 = dict(num_layers=80, num_heads=64, num_kv_heads=8, embed_dim=8192, intermediate_dim=28672)
_L3_8 = dict(num_layers=32, num_heads=32, embed_dim=4096, intermediate_dim=14336)
_L3_70 = dict(num_layers=80, num_heads=64, embed_dim=8192, intermediate_dim=28672)
_Q25_7 = dict(vocab_size=152_064, num_layers=28, num_heads=28, num_kv_heads=4, embed_dim=3584)
_Q25_14 = dict(vocab_size=152_064, num_layers=48, num_heads=40, num_kv_heads=8, embed_dim=5120)
_Q25_32 = dict(vocab_size=152_064, num_layers=64, num_heads=40, num_kv_heads=8, embed_dim=5120)
_Q25_72 = dict(vocab_size=152_064, num_layers=80, num_heads=64, num_kv_heads=8, embed_dim=8192)
_Q3_06 = dict(num_layers=28, num_heads=16, num_kv_heads=8, embed_dim=1024, intermediate_dim=3072)
_Q3_17 = dict(num_layers=28, num_heads=16, num_kv_heads=8, embed_dim=2048, intermediate_dim=6144)
_Q3_4 = dict(num_layers=36, num_heads=32, num_kv_heads=8, embed_dim=2560, intermediate_dim=9728)
_Q3_8 = dict(num_layers=36, num_heads=32, num_kv_heads=8, embed_dim=4096, intermediate_dim=12288)
_Q3_14 = dict(num_layers=40, num_heads=40, num_kv_heads=8, embed_dim=5120, intermediate_dim=17408)
_MISTRAL_7 = dict(
    family="MISTRAL",
    vocab_size=32_000,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    embed_dim=4096,
    intermediate_dim=14336,
    max_seq_len=32_768,
    norm_eps=1e-5,
)
_GEMMA = dict(
    family="GEMMA",
    vocab_size=256_000,
    head_dim=256,
    max_seq_len=8192,
    norm_eps=1e-6,
    norm_offset=True,
    activation="gelu_tanh",
    tie_embeddings=True,
    embed_scale=True,
)

SPECS: dict[str, ModelSpec] = {
    # Llama 2
    "llama2_7b": _llama2(**_L2_7),
    "llama2_13b": _llama2(**_L2_13),
    "llama2_70b": _llama2(**_L2_70),
    "llama2_reward_7b": _llama2(**_L2_7, num_classes=1),
    # Code Llama 2
    "code_llama2_7b": _code_llama2(**_L2_7),
    "code_llama2_13b": _code_llama2(**_L2_13),
    "code_llama2_70b": _code_llama2(**_L2_70),
    # Llama 3 / 3.1 / 3.2 / 3.3
    "llama3_8b": _llama3(**_L3_8, max_seq_len=8192),
    "llama3_70b": _llama3(**_L3_70, max_seq_len=8192),
    "llama3_1_8b": _llama3(**_L3_8, max_seq_len=131_072, rope_scaling=_LLAMA31_ROPE),
    "llama3_1_70b": _llama3(**_L3_70, max_seq_len=131_072, rope_scaling=_LLAMA31_ROPE),
    "llama3_1_405b": _llama3(
        num_layers=126,
        num_heads=128,
        embed_dim=16_384,
        intermediate_dim=53_248,
        max_seq_len=131_072,
        rope_scaling=_LLAMA31_ROPE,
    ),
    "llama3_2_1b": _llama3(
        family="LLAMA3_2",
        num_layers=16,
        num_heads=32,
        embed_dim=2048,
        intermediate_dim=8192,
        max_seq_len=131_072,
        rope_scaling=_LLAMA32_ROPE,
        tie_embeddings=True,
    ),
    "llama3_2_3b": _llama3(
        family="LLAMA3_2",
        num_layers=28,
        num_heads=24,
        embed_dim=3072,
        intermediate_dim=8192,
        max_seq_len=131_072,
        rope_scaling=_LLAMA32_ROPE,
        tie_embeddings=True,
    ),
    "llama3_3_70b": _llama3(**_L3_70, max_seq_len=131_072, rope_scaling=_LLAMA31_ROPE),
    # Mistral
    "mistral_7b": ModelSpec(**_MISTRAL_7),
    "mistral_reward_7b": ModelSpec(**_MISTRAL_7, num_classes=1),
    # Gemma
    "gemma_2b": ModelSpec(
        **_GEMMA, num_layers=18, num_heads=8, num_kv_heads=1, embed_dim=2048, intermediate_dim=16384
    ),
    "gemma_7b": ModelSpec(
        **_GEMMA,
        num_layers=28,
        num_heads=16,
        num_kv_heads=16,
        embed_dim=3072,
        intermediate_dim=24576,
    ),
    # Gemma 2
    "gemma2_2b": _gemma2(
        26,
        num_heads=8,
        num_kv_heads=4,
        head_dim=256,
        embed_dim=2304,
        intermediate_dim=9216,
        query_pre_attn_scalar=256,
    ),
    "gemma2_9b": _gemma2(
        42,
        num_heads=16,
        num_kv_heads=8,
        head_dim=256,
        embed_dim=3584,
        intermediate_dim=14336,
        query_pre_attn_scalar=256,
    ),
    "gemma2_27b": _gemma2(
        46,
        num_heads=32,
        num_kv_heads=16,
        head_dim=128,
        embed_dim=4608,
        intermediate_dim=36864,
        query_pre_attn_scalar=144,
    ),
    # Phi
    "phi3_mini": ModelSpec(
        family="PHI3_MINI",
        vocab_size=32_064,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        embed_dim=3072,
        intermediate_dim=8192,
        max_seq_len=4096,
        norm_eps=1e-5,
        sliding_window=2047,
    ),
    "phi4_14b": ModelSpec(
        family="PHI4",
        vocab_size=100_352,
        num_layers=40,
        num_heads=40,
        num_kv_heads=10,
        embed_dim=5120,
        intermediate_dim=17920,
        max_seq_len=16_384,
        norm_eps=1e-5,
        rope_base=250_000.0,
    ),
    # Qwen2
    "qwen2_0_5b": _qwen(
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        embed_dim=896,
        intermediate_dim=4864,
        max_seq_len=32_768,
        tie_embeddings=True,
    ),
    "qwen2_1_5b": _qwen(
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        embed_dim=1536,
        intermediate_dim=8960,
        max_seq_len=32_768,
        tie_embeddings=True,
    ),
    "qwen2_7b": _qwen(**_Q25_7, intermediate_dim=18944, max_seq_len=32_768),
    # Qwen2.5
    "qwen2_5_0_5b": _qwen(
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        embed_dim=896,
        intermediate_dim=4864,
        max_seq_len=32_768,
        tie_embeddings=True,
    ),
    "qwen2_5_1_5b_base": _qwen(
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        embed_dim=1536,
        intermediate_dim=8960,
        max_seq_len=131_072,
        tie_embeddings=True,
    ),
    "qwen2_5_1_5b_instruct": _qwen(
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        embed_dim=1536,
        intermediate_dim=8960,
        max_seq_len=32_768,
        tie_embeddings=True,
    ),
    "qwen2_5_3b": _qwen(
        num_layers=36,
        num_heads=16,
        num_kv_heads=2,
        embed_dim=2048,
        intermediate_dim=11008,
        max_seq_len=32_768,
        tie_embeddings=True,
    ),
    "qwen2_5_7b_base": _qwen(**_Q25_7, intermediate_dim=18944, max_seq_len=131_072),
    "qwen2_5_7b_instruct": _qwen(**_Q25_7, intermediate_dim=18944, max_seq_len=32_768),
    "qwen2_5_14b_base": _qwen(
        **_Q25_14, intermediate_dim=13824, max_seq_len=131_072, norm_eps=1e-5
    ),
    "qwen2_5_14b_instruct": _qwen(**_Q25_14, intermediate_dim=13824, max_seq_len=32_768),
    "qwen2_5_32b_base": _qwen(
        **_Q25_32, intermediate_dim=27648, max_seq_len=131_072, norm_eps=1e-5
    ),
    "qwen2_5_32b_instruct": _qwen(**_Q25_32, intermediate_dim=27648, max_seq_len=32_768),
    "qwen2_5_72b_base": _qwen(
        **_Q25_72, intermediate_dim=29568, max_seq_len=131_072, norm_eps=1e-5
    ),
    "qwen2_5_72b_instruct": _qwen(**_Q25_72, intermediate_dim=29568, max_seq_len=32_768),
    # Qwen3 (base: 32k context, instruct: 40k)
    "qwen3_0_6b_base": _qwen3(**_Q3_06, max_seq_len=32_768, tie_embeddings=True),
    "qwen3_0_6b_instruct": _qwen3(**_Q3_06, max_seq_len=40_960, tie_embeddings=True),
    "qwen3_1_7b_base": _qwen3(**_Q3_17, max_seq_len=32_768, tie_embeddings=True),
    "qwen3_1_7b_instruct": _qwen3(**_Q3_17, max_seq_len=40_960, tie_embeddings=True),
    "qwen3_4b_base": _qwen3(**_Q3_4, max_seq_len=32_768, tie_embeddings=True),
    "qwen3_4b_instruct": _qwen3(**_Q3_4, max_seq_len=40_960, tie_embeddings=True),
    "qwen3_8b_base": _qwen3(**_Q3_8, max_seq_len=32_768),
    "qwen3_8b_instruct": _qwen3(**_Q3_8, max_seq_len=40_960),
    "qwen3_14b_base": _qwen3(**_Q3_14, max_seq_len=32_768),
    "qwen3_14b_instruct": _qwen3(**_Q3_14, max_seq_len=40_960),
    "qwen3_32b": _qwen3(
        num_layers=64,
        num_heads=64,
        num_kv_heads=8,
        embed_dim=5120,
        intermediate_dim=25600,
        max_seq_len=40_960,
    ),
    # SmolLM2 (Llama architecture, tied embeddings)
    "smollm2_135m": _smollm2(
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        embed_dim=576,
        intermediate_dim=1536,
        rope_base=100_000.0,
    ),
    "smollm2_360m": _smollm2(
        num_layers=32,
        num_heads=15,
        num_kv_heads=5,
        embed_dim=960,
        intermediate_dim=2560,
        rope_base=100_000.0,
    ),
    "smollm2_1_7b": _smollm2(
        num_layers=24,
        num_heads=32,
        num_kv_heads=32,
        embed_dim=2048,
        intermediate_dim=8192,
        rope_base=130_000.0,
    ),
}


SPECS.update(DENSE_SPECS)  # Gemma 3, Phi-3.5, SmolLM3, OLMo 2, Granite 3.3
SPECS.update(GEMMA4_SPECS)  # Gemma 4 text decoders
SPECS.update(MOE_SPECS)  # Llama 4 text, Qwen3-MoE, Mixtral, gpt-oss


def get_spec(name: str) -> ModelSpec:
    """The spec of a model size by builder name (``"llama3_2_1b"``)."""
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(
            f"Unknown model size {name!r}. Known sizes: {', '.join(sorted(SPECS))}"
        ) from None
