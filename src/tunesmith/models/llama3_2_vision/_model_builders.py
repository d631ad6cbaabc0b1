"""Llama 3.2 Vision builders with torchtune's names and arguments.

Sizes are data (``tunesmith.models._vision_specs``); building goes through
``tunesmith.models.vision_builder``. ``*_trainable`` take ``True | False | "full" | "lora" |
"frozen"`` for the decoder, the image encoder and the fusion parts (projection head,
cross-attention layers, fusion embeddings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tunesmith.models._vision_specs import get_vision_spec
from tunesmith.models.builder import lora_settings
from tunesmith.models.llama3_2_vision._transform import (
    Llama3VisionTransform,
    llama3_2_vision_transform,
)
from tunesmith.models.spec import ModelSpec, RopeScaling
from tunesmith.models.vision_builder import (
    build_deep_fusion,
    build_fusion_decoder,
    build_tiled_vision_encoder,
)
from tunesmith.models.vision_spec import (
    LLAMA3_2_VISION_ASPECT_RATIOS,
    DeepFusionSpec,
    TiledViTSpec,
    every_nth_layer,
)
from tunesmith.modules.fusion import DeepFusionModel, Llama3VisionEncoder

__all__ = [
    "llama3_2_vision_11b",
    "llama3_2_vision_90b",
    "lora_llama3_2_vision_11b",
    "lora_llama3_2_vision_90b",
    "qlora_llama3_2_vision_11b",
    "qlora_llama3_2_vision_90b",
    "llama3_2_vision_encoder",
    "llama3_2_vision_decoder",
    "llama3_2_vision_transform",
    "Llama3VisionTransform",
]


def _sized(name: str, image_size: int) -> DeepFusionSpec:
    spec = get_vision_spec(name)
    if image_size != spec.encoder.tile_size:
        spec = spec.replace(encoder=_replace(spec.encoder, tile_size=image_size))
    return spec


def _replace(spec: TiledViTSpec, **kw: Any) -> TiledViTSpec:
    from dataclasses import replace

    return replace(spec, **kw)


def _full(name: str) -> Any:
    def builder(
        decoder_trainable: Any = False,
        encoder_trainable: Any = True,
        fusion_trainable: Any = True,
        image_size: int = 560,
    ) -> DeepFusionModel:
        return build_deep_fusion(
            _sized(name, image_size),
            decoder_trainable=decoder_trainable,
            encoder_trainable=encoder_trainable,
            fusion_trainable=fusion_trainable,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = __name__
    builder.__doc__ = (
        f"Build ``{name}`` (decoder frozen, encoder and fusion trainable by default).\n\n"
        "Args: decoder_trainable, encoder_trainable, fusion_trainable (True / False / "
        "'full' / 'frozen'), image_size (tile size in pixels, 560)."
    )
    return builder


def _lora(name: str, quantize: bool) -> Any:
    def builder(
        decoder_trainable: Any = "frozen",
        encoder_trainable: Any = "lora",
        fusion_trainable: Any = "lora",
        lora_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
        apply_lora_to_mlp: bool = False,
        apply_lora_to_output: bool = False,
        lora_rank: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        use_dora: bool = False,
        quantize_base: bool = quantize,
        image_size: int = 560,
    ) -> DeepFusionModel:
        settings = lora_settings(
            lora_attn_modules,
            apply_lora_to_mlp=apply_lora_to_mlp,
            apply_lora_to_output=apply_lora_to_output,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            use_dora=use_dora,
            quantize_base=quantize_base,
        )
        return build_deep_fusion(
            _sized(name, image_size),
            decoder_trainable=decoder_trainable,
            encoder_trainable=encoder_trainable,
            fusion_trainable=fusion_trainable,
            lora=settings,
        )

    prefix = "qlora" if quantize else "lora"
    builder.__name__ = builder.__qualname__ = f"{prefix}_{name}"
    builder.__module__ = __name__
    builder.__doc__ = (
        f"Build ``{name}`` with {'QLoRA (NF4 base)' if quantize else 'LoRA'} adapters on the "
        "parts set to 'lora'. Args are torchtune's: decoder_trainable, encoder_trainable, "
        "fusion_trainable ('full' / 'lora' / 'frozen' or True / False), lora_attn_modules, "
        "apply_lora_to_mlp, apply_lora_to_output, lora_rank, lora_alpha, lora_dropout, "
        "use_dora, quantize_base, image_size."
    )
    return builder


llama3_2_vision_11b = _full("llama3_2_vision_11b")
llama3_2_vision_90b = _full("llama3_2_vision_90b")
lora_llama3_2_vision_11b = _lora("llama3_2_vision_11b", quantize=False)
lora_llama3_2_vision_90b = _lora("llama3_2_vision_90b", quantize=False)
qlora_llama3_2_vision_11b = _lora("llama3_2_vision_11b", quantize=True)
qlora_llama3_2_vision_90b = _lora("llama3_2_vision_90b", quantize=True)


def llama3_2_vision_encoder(
    patch_size: int,
    num_heads: int,
    clip_embed_dim: int,
    clip_num_layers: int,
    clip_hidden_states: Sequence[int] | None,
    num_layers_projection: int,
    decoder_embed_dim: int,
    tile_size: int,
    max_num_tiles: int = 4,
    in_channels: int = 3,
) -> Llama3VisionEncoder:
    """torchtune's component builder: the tiled ViT plus projection head (MLP ratio 4)."""
    spec = TiledViTSpec(
        embed_dim=clip_embed_dim,
        num_layers=clip_num_layers,
        num_global_layers=num_layers_projection,
        num_heads=num_heads,
        intermediate_dim=4 * clip_embed_dim,
        patch_size=patch_size,
        tile_size=tile_size,
        max_num_tiles=max_num_tiles,
        out_indices=tuple(clip_hidden_states or ()),
        supported_aspect_ratios=_ratios(max_num_tiles),
        in_channels=in_channels,
    )
    return build_tiled_vision_encoder(spec, decoder_embed_dim)


def _ratios(max_num_tiles: int) -> tuple[tuple[int, int], ...]:
    if max_num_tiles == 4:
        return LLAMA3_2_VISION_ASPECT_RATIOS
    return tuple(
        (h, w)
        for h in range(1, max_num_tiles + 1)
        for w in range(1, max_num_tiles + 1)
        if h * w <= max_num_tiles
    )


def llama3_2_vision_decoder(
    vocab_size: int,
    num_layers: int,
    fusion_interval: int,
    num_special_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    encoder_max_seq_len: int | None = None,
    rope_base: float = 500_000.0,
    intermediate_dim: int | None = None,
) -> Any:
    """torchtune's component builder: the text decoder with a cross-attention layer every
    ``fusion_interval`` layers and ``num_special_tokens`` fusion embeddings.
    ``encoder_max_seq_len`` is accepted for torchtune's signature (no cross KV cache yet)."""
    hidden = intermediate_dim or _llama_hidden(embed_dim)
    decoder = ModelSpec(
        family="LLAMA3_VISION",
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        intermediate_dim=hidden,
        max_seq_len=max_seq_len,
        rope_base=rope_base,
        rope_scaling=RopeScaling(factor=8.0),
        norm_eps=1e-5,
    )
    encoder = get_vision_spec("llama3_2_vision_11b").encoder
    spec = DeepFusionSpec(
        decoder=decoder,
        encoder=encoder,
        fusion_layers=every_nth_layer(num_layers, fusion_interval),
        num_fusion_tokens=num_special_tokens,
    )
    return build_fusion_decoder(spec)


def _llama_hidden(dim: int, multiple_of: int = 1024, ffn_dim_multiplier: float = 1.3) -> int:
    hidden = int(ffn_dim_multiplier * int(8 * dim / 3))
    return multiple_of * math.ceil(hidden / multiple_of)
