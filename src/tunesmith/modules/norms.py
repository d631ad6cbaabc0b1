"""RMSNorm in the Llama form (``w * norm(x)``) and the Gemma form (``(1 + w) * norm(x)``);
LayerNorm computed in fp32 (torchtune's ``Fp32LayerNorm``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Fp32LayerNorm", "HeadsRMSNorm", "RMSNorm", "WeightlessRMSNorm"]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, computed in fp32.

    Args:
        dim: size of the normalized (last) dimension.
        eps: added to the mean square.
        offset: ``True`` for Gemma's ``(1 + scale)`` form, whose ``scale`` initialises at 0.
        scale_in_fp32: multiply by ``scale`` before casting back to the input dtype (OLMo 2's
            form; Llama's casts first). Equal in fp32, differs by rounding in bf16.

    Shapes: ``x [..., dim] -> [..., dim]`` (same dtype).
    """

    def __init__(
        self, dim: int, eps: float = 1e-6, offset: bool = False, scale_in_fp32: bool = False
    ):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.offset = offset
        self.scale_in_fp32 = scale_in_fp32
        self.scale = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (self.dim,), eps=self.eps)
        if self.offset:
            return (normed * (1.0 + self.scale.float())).to(x.dtype)
        if self.scale_in_fp32:
            return (self.scale * normed).to(x.dtype)
        return self.scale * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, offset={self.offset}"


class HeadsRMSNorm(RMSNorm):
    """RMSNorm over all heads of a projection jointly (OLMo 2's QK-norm, ``dim = h * hd``).

    Shapes: ``x [..., h, hd] -> [..., h, hd]`` with ``h * hd == dim``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(-2)).view(x.shape)


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


class Fp32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same arguments) computed in fp32, returned in the input's dtype.
    Shapes: ``x [..., *normalized_shape] -> same``."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)
