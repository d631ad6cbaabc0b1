"""Llama 4 builders with torchtune main's names and arguments: the text decoder (MoE,
chunked local attention, NoPE every 4th layer, QK-norm as released) with the early-fusion
vision encoder. Sizes are data (``_vision_specs`` / ``_specs``); building goes through
``vision_builder.build_early_fusion``; the model is
:class:`~tunesmith.modules.llama4_vision.Llama4EarlyFusionModel`.

``*_trainable`` take ``True | False | "full" | "lora" | "frozen"`` for the decoder, the tile
encoder (``encoder``) and the projection (``fusion``), as the other vision builders.
``apply_lora_to_mlp`` puts per-expert LoRA on the experts and LoRA on the shared expert,
dense MLP layers and encoder MLPs; ``apply_lora_to_output`` on the output projection and
(in a ``"lora"`` fusion part) the vision projection's three linear layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from tunesmith.models._vision_specs import get_vision_spec
from tunesmith.models.builder import lora_settings
from tunesmith.models.llama4._transform import Llama4Transform, llama4_transform
from tunesmith.models.vision_builder import build_early_fusion
from tunesmith.models.vision_spec import EarlyFusionSpec
from tunesmith.modules.llama4_vision import Llama4EarlyFusionModel

__all__ = [
    "llama4_scout_17b_16e",
    "lora_llama4_scout_17b_16e",
    "llama4_maverick_17b_128e",
    "lora_llama4_maverick_17b_128e",
    "llama4_transform",
    "Llama4Transform",
]


def _sized(name: str, image_size: int) -> EarlyFusionSpec:
    spec = get_vision_spec(name)
    assert isinstance(spec, EarlyFusionSpec)
    if image_size != spec.encoder.tile_size:
        spec = spec.replace(encoder=replace(spec.encoder, tile_size=int(image_size)))
    return spec


def _full(name: str) -> Callable[..., Llama4EarlyFusionModel]:
    def builder(
        decoder_trainable: Any = True,
        encoder_trainable: Any = False,
        fusion_trainable: Any = True,
        image_size: int = 336,
    ) -> Llama4EarlyFusionModel:
        return build_early_fusion(  # type: ignore[return-value]
            _sized(name, image_size),
            decoder_trainable=decoder_trainable,
            encoder_trainable=encoder_trainable,
            fusion_trainable=fusion_trainable,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = __name__
    builder.__doc__ = (
        f"Build ``{name}`` (decoder and projection trainable, encoder frozen by default).\n\n"
        "Args: decoder_trainable, encoder_trainable, fusion_trainable (True / False / "
        "'full' / 'frozen'), image_size (tile side in pixels, 336)."
    )
    return builder


def _lora(name: str) -> Callable[..., Llama4EarlyFusionModel]:
    def builder(
        lora_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
        *,
        decoder_trainable: Any = "lora",
        encoder_trainable: Any = "frozen",
        fusion_trainable: Any = "lora",
        apply_lora_to_mlp: bool = False,
        apply_lora_to_output: bool = False,
        lora_rank: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        use_dora: bool = False,
        quantize_base: bool = False,
        image_size: int = 336,
    ) -> Llama4EarlyFusionModel:
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
        return build_early_fusion(  # type: ignore[return-value]
            _sized(name, image_size),
            decoder_trainable=decoder_trainable,
            encoder_trainable=encoder_trainable,
            fusion_trainable=fusion_trainable,
            lora=settings,
        )

    builder.__name__ = builder.__qualname__ = f"lora_{name}"
    builder.__module__ = __name__
    builder.__doc__ = (
        f"Build ``{name}`` with LoRA adapters on the parts set to 'lora' (decoder and "
        "projection 'lora', encoder frozen by default). Args are torchtune's: "
        "lora_attn_modules, decoder_trainable, encoder_trainable, fusion_trainable, "
        "apply_lora_to_mlp, apply_lora_to_output, lora_rank, lora_alpha, lora_dropout, "
        "use_dora, quantize_base, image_size."
    )
    return builder


llama4_scout_17b_16e = _full("llama4_scout_17b_16e")
lora_llama4_scout_17b_16e = _lora("llama4_scout_17b_16e")
llama4_maverick_17b_128e = _full("llama4_maverick_17b_128e")
lora_llama4_maverick_17b_128e = _lora("llama4_maverick_17b_128e")
