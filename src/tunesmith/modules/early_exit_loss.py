"""Early-exit loss (LayerSkip, https://arxiv.org/abs/2404.16710) with torchtune 0.6.1's API
(``torchtune.modules.early_exit_loss``): intermediate layers' hidden states go through the
model's own final norm and output projection and their losses are averaged with per-layer
scales; curricula choose which layers contribute at each step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from tunesmith.utils import get_logger

__all__ = [
    "EarlyExitCurriculum",
    "GradualEarlyExitCurriculum",
    "RotationalEarlyExitCurriculum",
    "early_exit_loss",
    "inv_l_loss_scale",
    "inv_sqrt_l_loss_scale",
    "linear_l_loss_scale",
    "sqrt_l_loss_scale",
    "sum_l_loss_scale",
    "uniform_loss_scale",
]

_log = get_logger(__name__)


def _normalised(scales: Tensor, layer_ids: Tensor, n_layers: int, e_scale: float) -> Tensor:
    """Scale every layer but the last by ``e_scale``, then make the scales sum to 1."""
    scales = scales * torch.where(layer_ids < n_layers - 1, e_scale, 1.0)
    return scales / scales.sum()


def uniform_loss_scale(layer_ids: Tensor, n_layers: int, e_scale: float = 1.0) -> Tensor:
    """Equal weights for ``layer_ids [e]`` -> ``[e]`` summing to 1."""
    ones = torch.ones(len(layer_ids), device=layer_ids.device)
    return _normalised(ones, layer_ids, n_layers, e_scale)


def linear_l_loss_scale(layer_ids: Tensor, n_layers: int, e_scale: float = 1.0) -> Tensor:
    """Weights growing linearly with depth (``l + 1``)."""
    return _normalised((layer_ids + 1).float(), layer_ids, n_layers, e_scale)


def sum_l_loss_scale(layer_ids: Tensor, n_layers: int, e_scale: float = 1.0) -> Tensor:
    """Weights ``cumsum(l + 1)`` over the given layers."""
    return _normalised(torch.cumsum(layer_ids + 1, dim=0), layer_ids, n_layers, e_scale)


def sqrt_l_loss_scale(layer_ids: Tensor, n_layers: int, e_scale: float = 1.0) -> Tensor:
    """Weights ``sqrt(l + 1)``."""
    return _normalised(torch.sqrt(layer_ids + 1), layer_ids, n_layers, e_scale)


def inv_l_loss_scale(layer_ids: Tensor, n_layers: int, e_scale: float = 1.0) -> Tensor:
    """Weights ``1 / (l + 1)``."""
    return _normalised(1.0 / (layer_ids + 1), layer_ids, n_layers, e_scale)


def inv_sqrt_l_loss_scale(layer_ids: Tensor, n_layers: int, e_scale: float = 1.0) -> Tensor:
    """Weights ``1 / sqrt(l + 1)``."""
    return _normalised(torch.rsqrt(layer_ids + 1), layer_ids, n_layers, e_scale)


def early_exit_loss(
    model: nn.Module,
    hidden_states_dict: dict[int, Tensor],
    labels: Tensor,
    loss_fn: nn.Module,
    e_scale: float = 1.0,
    loss_scale_fn: Callable[[Tensor, int, float], Tensor] = uniform_loss_scale,
) -> Tensor:
    """The scaled sum of the losses of intermediate layers' hidden states.

    Args:
        model: a decoder with ``unembed(h [..., s, d]) -> [..., s, vocab]`` and ``layers``.
        hidden_states_dict: layer index -> its output ``[b, s, d]``.
        labels: ``[b, s]`` target ids (``loss_fn.ignore_index`` for masked positions).
        loss_fn: the loss of the last layer (token-level, with ``reduction`` and
            ``ignore_index``, e.g. ``nn.CrossEntropyLoss``); a copy runs per token.
        e_scale: weight of the early layers relative to the last one.
        loss_scale_fn: per-layer weights from ``(layer_ids [e], len(model.layers), e_scale)``.

    Returns:
        A scalar: ``sum_l scale_l * loss_l``, each ``loss_l`` averaged over unmasked tokens.
    """
    per_token = copy.deepcopy(loss_fn)
    per_token.reduction = "none"
    layer_ids = tuple(hidden_states_dict)
    e = len(layer_ids)
    logits = model.unembed(torch.stack(tuple(hidden_states_dict.values())))  # [e, b, s, v]
    logits = logits.reshape(-1, logits.size(-1)).contiguous()
    losses = per_token(logits, labels.repeat(e, 1).reshape(-1)).view(e, -1)
    unmasked = (labels != loss_fn.ignore_index).sum()
    losses = losses.float().sum(-1) / unmasked  # [e]
    scales = loss_scale_fn(torch.tensor(layer_ids).to(losses), len(model.layers), e_scale)
    return torch.sum(scales * losses)


class EarlyExitCurriculum:
    """Which layers' hidden states the early-exit loss uses at each step (static here).

    Args:
        do_output_hidden_states: one bool per layer.
        max_steps: the number of training steps of the curriculum.
        train_last_layer: always use the last layer.
        last_step: the step a previous run stopped at (resuming).
        verbose: log each step's selection.
    """

    def __init__(
        self,
        do_output_hidden_states: list[bool],
        max_steps: int,
        train_last_layer: bool = True,
        last_step: int | None = None,
        verbose: bool = False,
    ):
        self._init_do_output_hidden_states = do_output_hidden_states
        self._do_output_hidden_states = do_output_hidden_states
        self.train_last_layer = train_last_layer
        self.verbose = verbose
        self.max_steps = max_steps
        self._step = 0 if last_step is None else last_step

    def step(self) -> None:
        """Advance one training step (call at the end of each iteration)."""

    def get(self) -> np.ndarray:
        """The current selection, one bool per layer (the last one forced on when
        ``train_last_layer``)."""
        selection = np.copy(self._do_output_hidden_states)
        if self.train_last_layer:
            selection[-1] = True
        return selection

    def _logged(self) -> None:
        if self.verbose:
            _log.info("early-exit layers now %s", self._do_output_hidden_states)


class RotationalEarlyExitCurriculum(EarlyExitCurriculum):
    """Each step shifts the selection one layer deeper (wrapping around)."""

    def __init__(
        self,
        do_output_hidden_states: list[bool],
        max_steps: int,
        train_last_layer: bool = True,
        last_step: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(do_output_hidden_states, max_steps, train_last_layer, last_step, verbose)
        self._initial_do_output_hidden_states = np.copy(self._do_output_hidden_states)

    def step(self) -> None:
        self._do_output_hidden_states = np.roll(self._do_output_hidden_states, 1)
        self._step += 1
        self._logged()


class GradualEarlyExitCurriculum(EarlyExitCurriculum):
    """Layers join from the last one down: at ``fraction_scale * max_steps`` steps every layer
    the user selected is on. All start off.

    Args:
        fraction_scale: the fraction of ``max_steps`` after which every selected layer is on;
            the rest as :class:`EarlyExitCurriculum`.
    """

    def __init__(
        self,
        do_output_hidden_states: list[bool],
        max_steps: int,
        train_last_layer: bool = True,
        last_step: int | None = None,
        fraction_scale: float = 0.5,
        verbose: bool = False,
    ):
        super().__init__(do_output_hidden_states, max_steps, train_last_layer, last_step, verbose)
        self._final_do_output_hidden_states = np.copy(self._do_output_hidden_states)
        self._step = 0
        self._fraction_scale = fraction_scale
        for i in range(len(self._do_output_hidden_states)):
            self._do_output_hidden_states[i] = False

    def step(self) -> None:
        trained = self._step / self.max_steps
        n = len(self._do_output_hidden_states)
        on = [trained >= self._fraction_scale * (n - i) / n for i in range(n)]
        self._do_output_hidden_states = np.logical_and(on, self._final_do_output_hidden_states)
        self._step += 1
        self._logged()
