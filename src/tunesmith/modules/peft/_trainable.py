"""``TrainableParams``: torchtune's name for which parameters of a layer train.

The LoRA + QAT layer itself (torchtune's ``QATLoRALinear``) lives with the QAT code in
``tunesmith.quantization`` (``QATLoRALinear``, ``swap_lora_linear_with_qat``).
"""

from __future__ import annotations

from enum import Enum


class TrainableParams(Enum):
    """Which parameters of a layer train: all, only its LoRA adapter, or none (torchtune)."""

    FULL = "full"
    LORA = "lora"
    FROZEN = "frozen"
