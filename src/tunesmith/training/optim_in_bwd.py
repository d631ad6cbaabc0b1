"""torchtune's optimizer-in-backward API: one optimizer per parameter, stepped by a hook.

torchtune recipes build ``{param: optimizer}`` themselves and call
:func:`register_optim_in_bwd_hooks` and :func:`create_optim_in_bwd_wrapper`; tunesmith's own
recipes use :class:`tunesmith.training.OptimizerInBackward` (one object that is an
``Optimizer``), which steps parameters with the same hook.

Single process only, as in torchtune: under FSDP the per-parameter state dicts are shards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tunesmith.training.optimizers import _step_hook

__all__ = [
    "OptimizerInBackwardWrapper",
    "create_optim_in_bwd_wrapper",
    "register_optim_in_bwd_hooks",
]


def register_optim_in_bwd_hooks(
    model: nn.Module, optim_dict: dict[torch.nn.Parameter, Optimizer]
) -> None:
    """Step ``optim_dict[p]`` (then drop ``p.grad``) as soon as backward has accumulated the
    gradient of each ``p`` in ``model.parameters()``.

    Raises:
        KeyError: naming the parameter, when ``optim_dict`` has no optimizer for one of them.
    """
    for name, param in model.named_parameters():
        if param not in optim_dict:
            raise KeyError(f"register_optim_in_bwd_hooks: no optimizer for parameter {name!r}")
        param.register_post_accumulate_grad_hook(_step_hook(optim_dict[param]))


def create_optim_in_bwd_wrapper(
    model: nn.Module, optim_dict: dict[torch.nn.Parameter, Optimizer]
) -> OptimizerInBackwardWrapper:
    """The checkpoint wrapper of ``optim_dict``, keyed by ``model``'s parameter names."""
    return OptimizerInBackwardWrapper(
        {name: optim_dict[param] for name, param in model.named_parameters()}
    )


class OptimizerInBackwardWrapper:
    """Save, load and schedule the per-parameter optimizers of an optimizer-in-backward run.

    Args:
        optim_map: parameter name -> that parameter's optimizer.

    ``state_dict()`` is ``{param_name: optimizer state dict}``; ``param_groups`` lists every
    optimizer's first group (``get_lr`` reads it).
    """

    def __init__(self, optim_map: dict[str, Optimizer]) -> None:
        self.optim_map = optim_map
        self.lr_scheduler: LRScheduler | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [opt.param_groups[0] for opt in self.optim_map.values()]

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optim_map.items()}

    def load_state_dict(self, optim_ckpt_map: dict[str, Any]) -> None:
        """Load a dict made by :meth:`state_dict`.

        Raises:
            RuntimeError: for a parameter name this run does not have, or one it lacks.
        """
        unexpected = sorted(set(optim_ckpt_map) - set(self.optim_map))
        if unexpected:
            raise RuntimeError(
                f"Trying to load optimizer state for unexpected params {unexpected[:5]}: the "
                "checkpoint was saved from another model"
            )
        missing = sorted(set(self.optim_map) - set(optim_ckpt_map))
        if missing:
            raise RuntimeError(
                f"Expected to load optimizer state for params {missing[:5]}, which the "
                "checkpoint lacks: resume with the model the checkpoint was saved from"
            )
        for name, state in optim_ckpt_map.items():
            self.optim_map[name].load_state_dict(state)

    def get_optim_key(self, key: str) -> Any:
        """``param_groups[0][key]`` of the first optimizer (they share hyperparameters)."""
        return next(iter(self.optim_map.values())).param_groups[0][key]

    def set_lr_scheduler(self, lr_scheduler: LRScheduler) -> None:
        """Use ``lr_scheduler`` (built on one of the optimizers) for all of them: after each
        of its ``step()`` calls every optimizer's groups get its new learning rate."""
        self.lr_scheduler = lr_scheduler
        step = lr_scheduler.step

        def step_all(epoch: int | None = None) -> None:
            step() if epoch is None else step(epoch)
            lr = lr_scheduler.get_last_lr()[0]
            for opt in self.optim_map.values():
                for group in opt.param_groups:
                    group["lr"] = lr

        lr_scheduler.step = step_all  # type: ignore[method-assign]

    def step_lr_scheduler(self, epoch: int | None = None) -> None:
        """Step the scheduler set by :meth:`set_lr_scheduler`.

        Raises:
            RuntimeError: when none was set.
        """
        if self.lr_scheduler is None:
            raise RuntimeError("no LR scheduler: call set_lr_scheduler first")
        self.lr_scheduler.step(epoch)

    def get_last_lr(self) -> float:
        """The scheduler's last learning rate.

        Raises:
            RuntimeError: when no scheduler was set.
        """
        if self.lr_scheduler is None:
            raise RuntimeError("no LR scheduler: call set_lr_scheduler first")
        return self.lr_scheduler.get_last_lr()[0]
