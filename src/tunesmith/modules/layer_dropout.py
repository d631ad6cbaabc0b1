"""Layer dropout (LayerDrop, progressive layer dropping, LayerSkip) with torchtune 0.6.1's API
(``torchtune.modules.layer_dropout``): during training a layer is skipped for a random part of
the batch, its input passing through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn

from tunesmith.modules.common_utils import slice_str_to_array

__all__ = [
    "LayerDropout",
    "ModuleLayerDropoutWrapper",
    "ScaleType",
    "get_scale",
    "prepare_layer_dropout",
]


class LayerDropout(nn.Module):
    """Apply ``function`` to the rows of the input that are not dropped.

    Args:
        prob: probability that a row skips ``function`` (its input is its output).
        dim: the dimension rows are drawn along; only 0 (the batch) is supported.
        disable_on_eval: run ``function`` on every row in eval mode.
        seed: seed of this module's own CPU generator (None: unseeded).

    ``forward(function, input [b, ...], *args, **kwargs) -> [b, ...]``; ``inferred`` holds
    the fraction of rows that ran ``function`` on the last call.
    """

    def __init__(
        self,
        prob: float = 0.0,
        dim: int | None = 0,
        disable_on_eval: bool | None = True,
        seed: int | None = None,
    ):
        super().__init__()
        self.prob = prob
        self.dim = dim
        self.disable_on_eval = disable_on_eval
        self.generator = torch.Generator(device="cpu")
        self.inferred: float | Tensor | None = None
        if seed is not None:
            self.generator.manual_seed(seed)

    def forward(
        self, function: Callable[..., Tensor] | nn.Module, input: Tensor, *args: Any, **kwargs: Any
    ) -> Tensor:
        if self.prob == 0 or (self.disable_on_eval and not self.training):
            self.inferred = 1.0
            return function(input, *args, **kwargs)
        if self.dim != 0:
            raise ValueError(f"LayerDropout drops along dim 0 (the batch) only, got dim={self.dim}")
        n = input.shape[0]
        skip = torch.bernoulli(torch.full((n,), float(self.prob)), generator=self.generator)
        skip = skip.to(device=input.device, dtype=input.dtype)
        self.inferred = 1 - skip.mean()
        kept = (skip == 0).nonzero().flatten()
        out = input.clone()
        if kept.numel() > 0:
            out[kept] = function(input.index_select(0, kept), *args, **kwargs)
        return out


class ModuleLayerDropoutWrapper(nn.Module):
    """``module`` run through ``dropout``; other attributes, indexing and the state dict are
    the wrapped module's (its keys carry no ``module.`` prefix)."""

    def __init__(self, module: nn.Module, dropout: LayerDropout):
        super().__init__()
        self.module = module
        self.dropout = dropout

    def forward(self, input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.dropout(self.module, input, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except AttributeError:
            setattr(self.module, name, value)

    def __getitem__(self, key: int) -> Any:
        return self.module[key]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.module.load_state_dict(state_dict, *args, **kwargs)


class ScaleType(StrEnum):
    """How a quantity grows from 0 (at ``val = 0``) to 1 (at ``val = scale_period``)."""

    UNIFORM = "uniform"
    EXP = "exp"
    LINEAR = "linear"
    LOG = "log"
    SIN = "sin"
    SIGMOID = "sigmoid"
    STEP = "step"


def get_scale(scale_type: ScaleType, scale_period: int, val: int) -> float:
    """The ``scale_type`` curve at ``val``, clamped to ``[0, 1]``; 1 for ``val >= scale_period``
    or ``scale_period == 0``; ``UNIFORM`` is 1 everywhere.

    >>> get_scale(ScaleType.LINEAR, 10, 5)
    0.5
    """
    if scale_period == 0 or val >= scale_period:
        return 1.0
    t = val / scale_period
    curves: dict[ScaleType, Callable[[], float]] = {
        ScaleType.UNIFORM: lambda: 1.0,
        ScaleType.EXP: lambda: math.pow(2, t) - 1,
        ScaleType.LINEAR: lambda: t,
        ScaleType.LOG: lambda: math.log(val + 1, scale_period + 1),
        ScaleType.SIN: lambda: math.sin(0.5 * math.pi * t),
        ScaleType.SIGMOID: lambda: 1 / (1 + math.exp(-10 * (t - 0.5))),
    }
    if scale_type not in curves:
        raise ValueError(
            f"get_scale: unsupported scale_type {scale_type!r}; use one of {list(curves)}"
        )
    return max(min(curves[ScaleType(scale_type)](), 1.0), 0.0)


def prepare_layer_dropout(
    layers: nn.ModuleList | Iterable[nn.Module],
    prob_max: float = 0.0,
    prob_layer_scale: ScaleType | None = ScaleType.UNIFORM,
    layers_str: str | None = None,
    disable_on_eval: bool | None = True,
) -> None:
    """Wrap every layer of ``layers`` in place in a :class:`ModuleLayerDropoutWrapper`.

    Layer ``i`` of ``n`` drops with ``prob_max * get_scale(prob_layer_scale, n - 1, i)`` when
    ``layers_str`` (a :func:`~tunesmith.modules.common_utils.slice_str_to_array` string,
    default: every layer) selects it, else 0; its generator is seeded with ``i``.
    """
    num_layers = len(layers)  # type: ignore[arg-type]
    selected = slice_str_to_array(layers_str, num_layers) if layers_str else [True] * num_layers
    for i in range(num_layers):
        prob = (
            prob_max * get_scale(prob_layer_scale or ScaleType.UNIFORM, num_layers - 1, i)
            if selected[i]
            else 0.0
        )
        dropout = LayerDropout(prob, disable_on_eval=disable_on_eval, seed=i)
        layers[i] = ModuleLayerDropoutWrapper(layers[i], dropout)  # type: ignore[index]
