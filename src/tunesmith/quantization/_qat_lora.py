"""LoRA + quantization-aware training: a LoRA linear that trains against the quantization
of the weight it will be deployed with.

After training, LoRA is merged (``W + (alpha / rank) B A``) and the merged weight is
quantized. :class:`QATLoRALinear` fake-quantizes exactly that merged weight in its forward,
so (without dropout) the prepared model computes what the converted, quantized model
computes. With ``lora_dropout > 0`` a training forward cannot use the merged weight; it
then fake-quantizes the frozen base weight only and adds the adapter in floating point, as
torchtune's ``QATLoRALinear`` does (eval forwards still use the merged form).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.peft import LoRALinear

__all__ = ["QATLoRALinear", "merge_qat_lora_linears", "swap_lora_linear_with_qat"]


class QATLoRALinear(LoRALinear):
    """``x [..., in_dim] -> [..., out_dim]``: LoRA with fake-quantized activations and weight.

    Same parameters and state-dict keys as :class:`LoRALinear` (the fake quantizers hold no
    state), so checkpoints and PEFT adapters are unchanged by QAT.

    Args:
        in_dim, out_dim, rank, alpha, dropout, use_bias: as for ``LoRALinear``.
        activation_qat_config: torchao ``FakeQuantizeConfigBase`` for the input, or None.
        weight_qat_config: torchao ``FakeQuantizeConfigBase`` for the (merged) weight, or
            None (torchtune's default: the weight is not fake-quantized).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_bias: bool = False,
        *,
        activation_qat_config: Any = None,
        weight_qat_config: Any = None,
    ) -> None:
        from torchao.quantization.qat import FakeQuantizerBase

        super().__init__(in_dim, out_dim, rank, alpha, dropout=dropout, use_bias=use_bias)
        self.activation_fake_quantizer = (
            FakeQuantizerBase.from_config(activation_qat_config)
            if activation_qat_config is not None
            else None
        )
        self.weight_fake_quantizer: nn.Module = (
            FakeQuantizerBase.from_config(weight_qat_config)
            if weight_qat_config is not None
            else nn.Identity()
        )

    @classmethod
    def from_lora_linear(
        cls, lora: LoRALinear, activation_qat_config: Any = None, weight_qat_config: Any = None
    ) -> QATLoRALinear:
        """Wrap an existing LoRA layer, sharing its parameters (no copy)."""
        if type(lora) is not LoRALinear:
            raise ValueError(
                f"QAT supports plain LoRA layers only, not {type(lora).__name__} (DoRA / "
                "QLoRA bases cannot be fake-quantized); use a lora_* model builder without "
                "use_dora / quantize_base"
            )
        with torch.device("meta"):
            new = cls(
                lora.in_dim,
                lora.out_dim,
                lora.rank,
                lora.alpha,
                dropout=getattr(lora.dropout, "p", 0.0),
                use_bias=lora.use_bias,
                activation_qat_config=activation_qat_config,
                weight_qat_config=weight_qat_config,
            )
        new.weight, new.bias = lora.weight, lora.bias
        new.lora_a, new.lora_b, new.dropout = lora.lora_a, lora.lora_b, lora.dropout
        new.disabled = lora.disabled
        new.train(lora.training)
        return new

    def _merged(self) -> torch.Tensor:
        """``W + (alpha / rank) B A`` ``[out, in]``, differentiable in ``A`` and ``B``."""
        if self.disabled:
            return self.weight
        return self.weight + self.scaling * (self.lora_b.weight @ self.lora_a.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_dim] -> [..., out_dim]``."""
        act = x if self.activation_fake_quantizer is None else self.activation_fake_quantizer(x)
        if not (self.training and isinstance(self.dropout, nn.Dropout)):
            return F.linear(act, self.weight_fake_quantizer(self._merged()), self.bias)
        out = F.linear(act, self.weight_fake_quantizer(self.weight), self.bias)
        if self.disabled:
            return out
        return out + self.scaling * self.lora_b(self.lora_a(self.dropout(x)))


def _replace(model: nn.Module, fn: Any) -> int:
    """Replace every child ``c`` with ``fn(c)`` where that returns a module; count swaps."""
    swaps = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = fn(child)
            if new is not None:
                setattr(parent, name, new)
                swaps += 1
    return swaps


def swap_lora_linear_with_qat(
    model: nn.Module, activation_qat_config: Any, weight_qat_config: Any
) -> int:
    """Replace every ``LoRALinear`` in ``model`` by a :class:`QATLoRALinear`; returns how many."""

    def swap(child: nn.Module) -> nn.Module | None:
        if isinstance(child, LoRALinear) and not isinstance(child, QATLoRALinear):
            return QATLoRALinear.from_lora_linear(child, activation_qat_config, weight_qat_config)
        return None

    return _replace(model, swap)


def merge_qat_lora_linears(
    model: nn.Module, activation_qat_config: Any, weight_qat_config: Any
) -> int:
    """Replace every :class:`QATLoRALinear` by a torchao ``FakeQuantizedLinear`` over its
    merged weight (ready for torchao's convert step); returns how many."""
    from torchao.quantization.qat import FakeQuantizedLinear

    def merge(child: nn.Module) -> nn.Module | None:
        if isinstance(child, QATLoRALinear):
            return FakeQuantizedLinear.from_linear(
                child.to_linear(), activation_qat_config, weight_qat_config
            )
        return None

    return _replace(model, merge)
