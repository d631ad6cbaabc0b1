"""RMSNorm in the Llama form (``w * norm(x)``) and the Gemma form (``(1 + w) * norm(x)``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RMSNorm", "WeightlessRMSNorm"]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, computed in fp32.

    Args:
        dim: size of the normalized (last) dimension.
        eps: added to the mean square.
        offset: ``True`` for Gemma's ``(1 + scale)`` form, whose ``scale`` initialises at 0.

    Shapes: ``x [..., dim] -> [..., dim]`` (same dtype).
    """

    def __init__(self, dim: int, eps: float = 1e-6, offset: bool = False):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.offset = offset
        self.scale = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (self.dim,), eps=self.eps)
        if self.offset:
            return (normed * (1.0 + self.scale.float())).to(x.dtype)
        return self.scale * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, offset={self.offset}"


class WeightlessRMSNorm(nn.Module):
    """``x / rms(x)`` in fp32 with no parameters (Llama 4's QK "L2Norm").

    Shapes: ``x [..., dim] -> [..., dim]`` (same dtype).
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
