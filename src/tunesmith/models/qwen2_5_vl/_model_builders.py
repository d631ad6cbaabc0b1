"""Qwen2.5-VL builders: ``qwen2_5_vl_{3b,7b,32b,72b}`` and ``lora_`` / ``qlora_`` variants.

Sizes are data (``tunesmith.models._vision_specs``); ``qwen_vl_builders(size, module)`` makes
a size's three builders (Qwen3-VL's too), which go through
``tunesmith.models.vision_builder.build_early_fusion``. ``*_trainable`` take ``True | False |
"full" | "lora" | "frozen"`` for the decoder, the ViT (``encoder``) and the patch merger
(``fusion``). The model is :class:`~tunesmith.modules.qwen_vision.Qwen2_5_VLModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tunesmith.models._vision_specs import get_vision_spec
from tunesmith.models.builder import lora_settings
from tunesmith.models.qwen2_5_vl._transform import Qwen2_5_VLTransform, qwen2_5_vl_transform
from tunesmith.models.vision_builder import build_early_fusion
from tunesmith.modules.qwen_vision import Qwen2_5_VLModel

_SIZES = ("3b", "7b", "32b", "72b")

__all__ = [
    *(f"qwen2_5_vl_{s}" for s in _SIZES),
    *(f"lora_qwen2_5_vl_{s}" for s in _SIZES),
    *(f"qlora_qwen2_5_vl_{s}" for s in _SIZES),
    "Qwen2_5_VLTransform",
    "qwen2_5_vl_transform",
]


def _full(name: str, module: str) -> Callable[..., Qwen2_5_VLModel]:
    def builder(
        decoder_trainable: Any = True,
        encoder_trainable: Any = False,
        fusion_trainable: Any = True,
    ) -> Qwen2_5_VLModel:
        return build_early_fusion(
            get_vision_spec(name),  # type: ignore[arg-type]
            decoder_trainable=decoder_trainable,
            encoder_trainable=encoder_trainable,
            fusion_trainable=fusion_trainable,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = module
    builder.__doc__ = (
        f"Build ``{name}`` (decoder and merger trainable, ViT frozen by default).\n\n"
        "Args: decoder_trainable, encoder_trainable, fusion_trainable (True / False / "
        "'full' / 'frozen')."
    )
    return builder


def _lora(name: str, module: str, quantize: bool) -> Callable[..., Qwen2_5_VLModel]:
    def builder(
        decoder_trainable: Any = "lora",
        encoder_trainable: Any = "frozen",
        fusion_trainable: Any = True,
        lora_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
        apply_lora_to_mlp: bool = False,
        apply_lora_to_output: bool = False,
        lora_rank: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        use_dora: bool = False,
        quantize_base: bool = quantize,
    ) -> Qwen2_5_VLModel:
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
        return build_early_fusion(
            get_vision_spec(name),  # type: ignore[arg-type]
            decoder_trainable=decoder_trainable,
            encoder_trainable=encoder_trainable,
            fusion_trainable=fusion_trainable,
            lora=settings,
        )

    prefix = "qlora" if quantize else "lora"
    builder.__name__ = builder.__qualname__ = f"{prefix}_{name}"
    builder.__module__ = module
    kind = "QLoRA (NF4 base)" if quantize else "LoRA"
    builder.__doc__ = (
        f"Build ``{name}`` with {kind} adapters (decoder 'lora', ViT frozen, merger trainable "
        "by default); torchtune's LoRA arguments plus the three ``*_trainable`` ones."
    )
    return builder


def qwen_vl_builders(name: str, module: str) -> tuple[Callable[..., Qwen2_5_VLModel], ...]:
    """``(<name>, lora_<name>, qlora_<name>)`` for the Qwen-VL size ``name`` (a key of
    ``_vision_specs``), their ``__module__`` ``module`` (where the public names live)."""
    return _full(name, module), _lora(name, module, False), _lora(name, module, True)


qwen2_5_vl_3b, lora_qwen2_5_vl_3b, qlora_qwen2_5_vl_3b = qwen_vl_builders("qwen2_5_vl_3b", __name__)
qwen2_5_vl_7b, lora_qwen2_5_vl_7b, qlora_qwen2_5_vl_7b = qwen_vl_builders("qwen2_5_vl_7b", __name__)
qwen2_5_vl_32b, lora_qwen2_5_vl_32b, qlora_qwen2_5_vl_32b = qwen_vl_builders(
    "qwen2_5_vl_32b", __name__
)
qwen2_5_vl_72b, lora_qwen2_5_vl_72b, qlora_qwen2_5_vl_72b = qwen_vl_builders(
    "qwen2_5_vl_72b", __name__
)
