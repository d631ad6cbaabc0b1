"""Feed-forward: gated (SwiGLU / GeGLU) or plain two-layer (CLIP), torchtune's names: w1
gate / in, w2 down, w3 up."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeedForward", "ACTIVATIONS", "scale_hidden_dim_for_mlp"]


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "gelu_tanh": _gelu_tanh,
    "gelu": F.gelu,
}


class FeedForward(nn.Module):
    """``w2(act(w1(x)) * w3(x))``, or ``w2(act(w1(x)))`` when ``up_proj`` is None.

    Args:
        gate_proj: ``w1``, ``[dim] -> [hidden]``.
        down_proj: ``w2``, ``[hidden] -> [dim]``.
        up_proj: ``w3``, ``[dim] -> [hidden]``; None for a plain MLP (vision encoders).
        activation: ``"silu"`` (SwiGLU), ``"gelu_tanh"`` (GeGLU), ``"gelu"`` (exact), or a
            callable.

    Shapes: ``x [b, s, dim] -> [b, s, dim]``.
    """

    def __init__(
        self,
        *,
        gate_proj: nn.Module,
        down_proj: nn.Module,
        up_proj: nn.Module | None,
        activation: str | Callable[[Tensor], Tensor] = "silu",
    ):
        super().__init__()
        self.w1 = gate_proj
        self.w2 = down_proj
        self.w3 = up_proj
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}."
                )
            activation = ACTIVATIONS[activation]
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.w3 is None:
            return self.w2(self.activation(self.w1(x)))
        return self.w2(self.activation(self.w1(x)) * self.w3(x))


def scale_hidden_dim_for_mlp(dim: float, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: ``4 * int(2 * dim / 3)`` (the parameters of a ``4 * dim`` MLP),
    rounded up to a multiple of ``multiple_of`` (torchtune's ``scale_hidden_dim_for_mlp``)."""
    hidden = 4 * int(2 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)
