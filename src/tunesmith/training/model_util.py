"""Model switches for training (torchtune's ``training.disable_dropout``)."""

from __future__ import annotations

import warnings

from torch import nn

__all__ = ["disable_dropout"]


def disable_dropout(model: nn.Module) -> None:
    """Set ``p = 0`` on every ``nn.Dropout`` of ``model`` that drops anything, warning per
    module (RL recipes compare log-probabilities of two forward passes, which dropout would
    make differ)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p != 0:
            warnings.warn(
                f"Found Dropout with value {module.p} in module {module}. Setting to zero.",
                stacklevel=2,
            )
            module.p = 0
