"""Qwen3-VL builders: ``qwen3_vl_{2b,4b,8b,32b}`` and ``lora_`` / ``qlora_`` variants.

Sizes are data (``tunesmith.models._vision_specs``); the builders are Qwen2.5-VL's (the same
``*_trainable`` and LoRA arguments; ``fusion`` = the patch merger and the DeepStack mergers),
building :class:`~tunesmith.modules.qwen_vision.Qwen2_5_VLModel` with Qwen3-VL's ViT
(learned interpolated positions, DeepStack) and Qwen3 text decoder (QK-norm, interleaved
M-RoPE).
"""

from __future__ import annotations

from tunesmith.models.qwen2_5_vl._model_builders import _full, _lora
from tunesmith.models.qwen3_vl._transform import qwen3_vl_transform

_SIZES = ("2b", "4b", "8b", "32b")

__all__ = [
    *(f"qwen3_vl_{s}" for s in _SIZES),
    *(f"lora_qwen3_vl_{s}" for s in _SIZES),
    *(f"qlora_qwen3_vl_{s}" for s in _SIZES),
    "qwen3_vl_transform",
]

qwen3_vl_2b = _full("qwen3_vl_2b")
lora_qwen3_vl_2b = _lora("qwen3_vl_2b", False)
qlora_qwen3_vl_2b = _lora("qwen3_vl_2b", True)
qwen3_vl_4b = _full("qwen3_vl_4b")
lora_qwen3_vl_4b = _lora("qwen3_vl_4b", False)
qlora_qwen3_vl_4b = _lora("qwen3_vl_4b", True)
qwen3_vl_8b = _full("qwen3_vl_8b")
lora_qwen3_vl_8b = _lora("qwen3_vl_8b", False)
qlora_qwen3_vl_8b = _lora("qwen3_vl_8b", True)
qwen3_vl_32b = _full("qwen3_vl_32b")
lora_qwen3_vl_32b = _lora("qwen3_vl_32b", False)
qlora_qwen3_vl_32b = _lora("qwen3_vl_32b", True)

for _b in (globals()[n] for n in __all__ if n != "qwen3_vl_transform"):
    _b.__module__ = __name__
