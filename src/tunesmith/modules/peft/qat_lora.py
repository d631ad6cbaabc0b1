"""LoRA with quantization-aware training of the frozen base (torchtune's ``QATLoRALinear``).

The base path sees fake-quantized activations and weights (torchao's fake quantizers, so the
model learns to tolerate the quantization it will be converted to after training); the
adapter path sees the unquantized input.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.peft.lora import LoRALinear


class TrainableParams(Enum):
    """Which parameters of a layer train: all, only its LoRA adapter, or none (torchtune)."""

    FULL = "full"
    LORA = "lora"
    FROZEN = "frozen"


def _fake_quantizer(config: Any) -> nn.Module:
    if config is None:
        return nn.Identity()
    from torchao.quantization.qat import FakeQuantizerBase

    return FakeQuantizerBase.from_config(config)


class QATLoRALinear(LoRALinear):
    """``[..., in_dim] -> [..., out_dim]``: LoRA over a fake-quantized frozen base.

    Args:
        in_dim, out_dim, rank, alpha, dropout: as :class:`LoRALinear` (no bias, no NF4).
        activation_qat_config: torchao fake-quantize config for the input of the base path
            (e.g. ``IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)``).
        weight_qat_config: torchao fake-quantize config for the base weight (e.g.
            ``IntxFakeQuantizeConfig(torch.int4, group_size=32)``); ``in_dim`` must be a
            multiple of its group size.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        activation_qat_config: Any = None,
        weight_qat_config: Any = None,
    ) -> None:
        super().__init__(in_dim, out_dim, rank, alpha, dropout, use_bias=False)
        group_size = getattr(weight_qat_config, "group_size", None)
        if group_size is not None and in_dim % group_size != 0:
            raise ValueError(
                f"QAT LoRA: in_dim {in_dim} is not a multiple of the weight group_size "
                f"{group_size}; choose a group size that divides the layer's input dimension"
            )
        self.activation_fake_quantizer = _fake_quantizer(activation_qat_config)
        self.weight_fake_quantizer = _fake_quantizer(weight_qat_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_dim] -> [..., out_dim]``."""
        out = F.linear(self.activation_fake_quantizer(x), self.weight_fake_quantizer(self.weight))
        if self.disabled:
            return out
        return out + self.scaling * self.lora_b(self.lora_a(self.dropout(x)))

    @classmethod
    def from_lora_linear(
        cls,
        lora_linear: LoRALinear,
        activation_qat_config: Any = None,
        weight_qat_config: Any = None,
    ) -> QATLoRALinear:
        """A ``QATLoRALinear`` sharing ``lora_linear``'s base weight and adapter parameters."""
        if lora_linear.bias is not None or lora_linear._quantize_base:
            raise ValueError(
                "QAT + LoRA supports bias-free, unquantized base layers only (no use_bias, "
                "no quantize_base / QLoRA)"
            )
        dropout = lora_linear.dropout.p if isinstance(lora_linear.dropout, nn.Dropout) else 0.0
        new = cls(
            lora_linear.in_dim,
            lora_linear.out_dim,
            lora_linear.rank,
            lora_linear.alpha,
            dropout,
            activation_qat_config,
            weight_qat_config,
        )
        if not lora_linear.weight.is_meta:  # meta-device models are materialised later
            new.weight = lora_linear.weight
            new.lora_a.weight = lora_linear.lora_a.weight
            new.lora_b.weight = lora_linear.lora_b.weight
        new.disabled = lora_linear.disabled
        return new
