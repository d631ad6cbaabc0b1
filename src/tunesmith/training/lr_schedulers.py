"""Learning-rate schedules (warmup then cosine / linear / constant) as ``LambdaLR``s.

The multipliers match Hugging Face transformers' ``get_*_schedule_with_warmup`` exactly, so a
torchtune or transformers config gives the same learning-rate curve here.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "get_constant_schedule_with_warmup",
    "get_cosine_schedule_with_warmup",
    "get_linear_schedule_with_warmup",
    "get_lr",
]


def _check_steps(num_warmup_steps: int, num_training_steps: int | None = None) -> None:
    if num_warmup_steps < 0:
        raise ValueError(f"lr_scheduler.num_warmup_steps must be >= 0, got {num_warmup_steps}")
    if num_training_steps is not None and num_training_steps < 0:
        raise ValueError(f"lr_scheduler.num_training_steps must be >= 0, got {num_training_steps}")


def get_cosine_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup from 0 to the optimizer's lr over ``num_warmup_steps``, then a cosine decay
    to 0 at ``num_training_steps`` (``num_cycles=0.5`` is half a cosine wave).
    """
    _check_steps(num_warmup_steps, num_training_steps)

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_linear_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup from 0 over ``num_warmup_steps``, then linear decay to 0 at
    ``num_training_steps``."""
    _check_steps(num_warmup_steps, num_training_steps)

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_constant_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int | None = None,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup from 0 over ``num_warmup_steps``, then the optimizer's lr unchanged.

    ``num_training_steps`` is accepted (and ignored) so recipes can pass it to any schedule.
    """
    _check_steps(num_warmup_steps, num_training_steps)

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1.0, num_warmup_steps)
        return 1.0

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_lr(optimizer: Optimizer) -> float:
    """The current learning rate of ``optimizer`` (also of an ``OptimizerInBackward``).

    Where param groups hold different rates (e.g. a smaller lr for embeddings) this returns the
    first group's, which is the one the schedule multiplies the same way as every other.
    """
    groups = optimizer.param_groups
    if not groups:
        raise ValueError("get_lr: the optimizer has no param groups (no trainable parameters?)")
    lr = groups[0]["lr"]
    return float(lr.item()) if hasattr(lr, "item") else float(lr)
