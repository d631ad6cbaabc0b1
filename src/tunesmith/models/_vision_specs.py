"""Sizes of vision-language models, keyed by torchtune's builder names (numbers from the
released Hugging Face ``config.json`` files)."""

from __future__ import annotations

from tunesmith.models.spec import ModelSpec, RopeScaling
from tunesmith.models.vision_spec import (
    DeepFusionSpec,
    EarlyFusionSpec,
    Llama4ViTSpec,
    QwenViTSpec,
    TiledViTSpec,
    every_nth_layer,
)

__all__ = ["VISION_SPECS", "get_vision_spec"]

_LLAMA32_VISION_ENCODER = TiledViTSpec(
    embed_dim=1280,
    num_layers=32,
    num_global_layers=8,
    num_heads=16,
    intermediate_dim=5120,
    patch_size=14,
    tile_size=560,
    max_num_tiles=4,
    out_indices=(3, 7, 15, 23, 30),
)


def _llama32_vision(num_layers: int, **kw: object) -> DeepFusionSpec:
    decoder = ModelSpec(
        **{
            "family": "LLAMA3_VISION",
            "vocab_size": 128_256,
            "num_layers": num_layers,
            "num_kv_heads": 8,
            "max_seq_len": 131_072,
            "rope_base": 500_000.0,
            "rope_scaling": RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0),
            "norm_eps": 1e-5,
            **kw,
        }
    )
    return DeepFusionSpec(
        decoder=decoder,
        encoder=_LLAMA32_VISION_ENCODER,
        fusion_layers=every_nth_layer(num_layers, 4),
    )


def _qwen2_5_vl(vocab: int, tie: bool, **kw: object) -> EarlyFusionSpec:
    decoder = ModelSpec(
        **{
            "family": "QWEN2_5_VL",
            "vocab_size": vocab,
            "max_seq_len": 128_000,
            "rope_base": 1_000_000.0,
            "norm_eps": 1e-6,
            "qkv_bias": True,
            "tie_embeddings": tie,
            "mrope_section": (16, 24, 24),
            **kw,
        }
    )
    encoder = QwenViTSpec(
        embed_dim=1280,
        num_layers=32,
        num_heads=16,
        intermediate_dim=3420,
        full_attention_layers=(7, 15, 23, 31),
    )
    return EarlyFusionSpec(decoder=decoder, encoder=encoder)


def _qwen3_vl(tie: bool, vit: str, **kw: object) -> EarlyFusionSpec:
    decoder = ModelSpec(
        **{
            "family": "QWEN3_VL",
            "vocab_size": 151_936,
            "max_seq_len": 262_144,
            "head_dim": 128,
            "num_kv_heads": 8,
            "rope_base": 5_000_000.0,
            "norm_eps": 1e-6,
            "qk_norm": True,
            "tie_embeddings": tie,
            "mrope_section": (24, 20, 20),
            "mrope_interleaved": True,
            **kw,
        }
    )
    small = vit == "small"  # 2B / 4B: 24 layers of width 1024; 8B / 32B: 27 of 1152
    encoder = QwenViTSpec(
        embed_dim=1024 if small else 1152,
        num_layers=24 if small else 27,
        num_heads=16,
        intermediate_dim=4096 if small else 4304,
        full_attention_layers=(),
        patch_size=16,
        window_size=None,
        activation="gelu_tanh",
        norm="layer",
        gated_mlp=False,
        patch_bias=True,
        num_position_embeddings=2304,
        deepstack_layers=(5, 11, 17) if small else (8, 16, 24),
    )
    return EarlyFusionSpec(decoder=decoder, encoder=encoder, family="QWEN3_VL")


def _llama4(text: str) -> EarlyFusionSpec:
    """Llama 4 Scout / Maverick with their (shared) vision encoder: the released
    ``vision_config`` (1408 wide, 34 layers, 336 px tiles of 14 px patches, projector 4096);
    the decoder is the text model of ``_specs``; images replace ``<|patch|>`` (200092)."""
    from tunesmith.models._specs import get_spec

    encoder = Llama4ViTSpec(embed_dim=1408, num_layers=34, num_heads=16, intermediate_dim=5632)
    return EarlyFusionSpec(
        decoder=get_spec(text), encoder=encoder, image_token_id=200_092, family="LLAMA4"
    )


VISION_SPECS: dict[str, DeepFusionSpec | EarlyFusionSpec] = {
    "llama4_scout_17b_16e": _llama4("llama4_scout_17b_16e"),
    "llama4_maverick_17b_128e": _llama4("llama4_maverick_17b_128e"),
    # 40 text layers in HF = 32 self-attention + 8 cross-attention
    "llama3_2_vision_11b": _llama32_vision(
        32, num_heads=32, embed_dim=4096, intermediate_dim=14_336
    ),
    # 100 text layers in HF = 80 self-attention + 20 cross-attention
    "llama3_2_vision_90b": _llama32_vision(
        80, num_heads=64, embed_dim=8192, intermediate_dim=28_672
    ),
    "qwen2_5_vl_3b": _qwen2_5_vl(
        151_936,
        True,
        num_layers=36,
        num_heads=16,
        num_kv_heads=2,
        embed_dim=2048,
        intermediate_dim=11_008,
    ),
    "qwen2_5_vl_7b": _qwen2_5_vl(
        152_064,
        False,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        embed_dim=3584,
        intermediate_dim=18_944,
    ),
    "qwen2_5_vl_32b": _qwen2_5_vl(
        152_064,
        False,
        num_layers=64,
        num_heads=40,
        num_kv_heads=8,
        embed_dim=5120,
        intermediate_dim=27_648,
    ),
    "qwen2_5_vl_72b": _qwen2_5_vl(
        152_064,
        False,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        embed_dim=8192,
        intermediate_dim=29_568,
    ),
    "qwen3_vl_2b": _qwen3_vl(
        True, "small", num_layers=28, num_heads=16, embed_dim=2048, intermediate_dim=6144
    ),
    "qwen3_vl_4b": _qwen3_vl(
        True, "small", num_layers=36, num_heads=32, embed_dim=2560, intermediate_dim=9728
    ),
    "qwen3_vl_8b": _qwen3_vl(
        False, "large", num_layers=36, num_heads=32, embed_dim=4096, intermediate_dim=12_288
    ),
    "qwen3_vl_32b": _qwen3_vl(
        False, "large", num_layers=64, num_heads=64, embed_dim=5120, intermediate_dim=25_600
    ),
}


def get_vision_spec(name: str) -> DeepFusionSpec | EarlyFusionSpec:
    """The spec of a named size (``llama3_2_vision_11b``, ...)."""
    if name not in VISION_SPECS:
        raise KeyError(f"unknown vision model {name!r}; known: {', '.join(sorted(VISION_SPECS))}")
    return VISION_SPECS[name]
