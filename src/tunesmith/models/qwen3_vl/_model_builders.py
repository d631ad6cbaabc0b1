"""Qwen3-VL builders: ``qwen3_vl_{2b,4b,8b,32b}`` and ``lora_`` / ``qlora_`` variants.

Sizes are data (``tunesmith.models._vision_specs``); the builders are Qwen2.5-VL's (the same
``*_trainable`` and LoRA arguments; ``fusion`` = the patch merger and the DeepStack mergers),
building :class:`~tunesmith.modules.qwen_vision.Qwen2_5_VLModel` with Qwen3-VL's ViT
(learned interpolated positions, DeepStack) and Qwen3 text decoder (QK-norm, interleaved
M-RoPE).
"""

from __future__ import annotations

from tunesmith.models.qwen2_5_vl._model_builders import qwen_vl_builders
from tunesmith.models.qwen3_vl._transform import qwen3_vl_transform

_SIZES = ("2b", "4b", "8b", "32b")

__all__ = [
    *(f"qwen3_vl_{s}" for s in _SIZES),
    *(f"lora_qwen3_vl_{s}" for s in _SIZES),
    *(f"qlora_qwen3_vl_{s}" for s in _SIZES),
    "qwen3_vl_transform",
]

qwen3_vl_2b, lora_qwen3_vl_2b, qlora_qwen3_vl_2b = qwen_vl_builders("qwen3_vl_2b", __name__)
qwen3_vl_4b, lora_qwen3_vl_4b, qlora_qwen3_vl_4b = qwen_vl_builders("qwen3_vl_4b", __name__)
qwen3_vl_8b, lora_qwen3_vl_8b, qlora_qwen3_vl_8b = qwen_vl_builders("qwen3_vl_8b", __name__)
qwen3_vl_32b, lora_qwen3_vl_32b, qlora_qwen3_vl_32b = qwen_vl_builders("qwen3_vl_32b", __name__)
