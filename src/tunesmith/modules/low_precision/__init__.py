"""tunesmith.modules.low_precision: a frozen linear layer with an NF4 weight (torchtune's
``torchtune.modules.low_precision.FrozenNF4Linear``), the base layer QLoRA adapts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunesmith.modules.peft._nf4 import _nf4_api, nf4_linear

__all__ = ["FrozenNF4Linear"]


class FrozenNF4Linear(nn.Linear):
    """``nn.Linear`` whose weight ``[out_dim, in_dim]`` is quantized to NF4 at construction
    and frozen (the bias too). ``quantization_kwargs`` go to torchao's ``to_nf4``
    (``block_size``, ``scaler_block_size``). Forward: ``x [..., in_dim] -> [..., out_dim]``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        **quantization_kwargs: Any,
    ) -> None:
        super().__init__(in_dim, out_dim, bias=bias, device=device, dtype=dtype)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        _, to_nf4, _ = _nf4_api()
        self.weight = nn.Parameter(to_nf4(self.weight, **quantization_kwargs), requires_grad=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """NF4 matmul (the weight is dequantized block by block), plus the bias."""
        out = nf4_linear(input, self.weight)
        return out + self.bias if self.bias is not None else out
