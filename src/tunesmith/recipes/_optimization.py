"""Optimizer, learning-rate schedule, resume and the checkpoint saver: the block every training
recipe (finetune, dpo, knowledge_distillation, reward_model, grpo, ppo) sets up between its data
and its loop, in one place.

``setup_optimization`` builds the optimizer over the model's trainable parameters (or takes one
the recipe built itself, e.g. finetune's optimizer-in-backward), the schedule over the run's
optimizer steps, restores optimizer / schedule / sampler position on resume (full state dicts
into FSDP2 shards, or a sharded DCP folder resharded in place) and returns them with the
recipe's :class:`CheckpointSaver`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from tunesmith.config import instantiate
from tunesmith.recipes._checkpoint_saver import CheckpointSaver
from tunesmith.training.checkpointing._recipe_state import restore_recipe_state


@dataclass
class Optimization:
    """What :func:`setup_optimization` returns: the optimizer, the schedule (or ``None``), where
    a resumed run starts (``epochs_run``, ``global_step``) and the saver."""

    optimizer: Any
    lr_scheduler: Any
    epochs_run: int
    global_step: int
    save: CheckpointSaver


def setup_optimization(
    cfg: DictConfig,
    model: torch.nn.Module,
    checkpointer: Any,
    sampler: Any,
    state: dict[str, Any],
    *,
    resume: bool,
    device: torch.device,
    rank: int,
    world_size: int,
    is_peft: bool,
    seed: int,
    epochs: int,
    accum: int,
    total_steps: int,
    sharded: Any = None,
    optimizer: Any = None,
) -> Optimization:
    """Optimizer (``cfg.optimizer`` over the trainable parameters unless ``optimizer`` is
    given), schedule over ``total_steps`` optimizer steps, resume from ``state`` (the loaded
    recipe state; consumed) and a :class:`CheckpointSaver`.

    ``sharded`` is the recipe's sharded (DCP) checkpointer when it saves one: on resume it
    loads the trained tensors and the optimizer state in place, resharded to this world size.
    """
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = instantiate(
            cfg.optimizer, trainable, **fused_adam(cfg.optimizer, device, world_size)
        )
    lr_scheduler, epochs_run, global_step = schedule_and_resume(
        cfg,
        model,
        optimizer,
        sampler,
        state,
        resume=resume,
        world_size=world_size,
        total_steps=total_steps,
    )
    if resume and sharded is not None:  # trained tensors + optimizer, resharded in place
        sharded.load(model, optimizer)
    save = CheckpointSaver(
        cfg,
        checkpointer,
        model,
        optimizer,
        lr_scheduler,
        sampler,
        rank=rank,
        world_size=world_size,
        is_peft=is_peft,
        seed=seed,
        epochs=epochs,
        accum=accum,
        sharded=sharded,
    )
    return Optimization(optimizer, lr_scheduler, epochs_run, global_step, save)


def epoch_steps(cfg: DictConfig, num_batches: int, accum: int) -> int:
    """Optimizer steps per epoch: ``num_batches // accum``, capped by ``max_steps_per_epoch``."""
    steps = num_batches // accum
    if cfg.get("max_steps_per_epoch"):
        steps = min(steps, int(cfg.max_steps_per_epoch))
    if steps == 0:
        raise ValueError(
            f"gradient_accumulation_steps={accum} is larger than the {num_batches} batches of an "
            "epoch: lower gradient_accumulation_steps or batch_size"
        )
    return steps


def schedule_and_resume(
    cfg: DictConfig,
    model: torch.nn.Module,
    optimizer: Any,
    sampler: Any,
    state: dict[str, Any],
    *,
    resume: bool,
    world_size: int,
    total_steps: int,
) -> tuple[Any, int, int]:
    """``(lr_scheduler or None, epochs_run, global_step)``; on resume the optimizer, schedule
    and sampler position are restored from the recipe state in ``state``."""
    lr_scheduler = None
    if cfg.get("lr_scheduler") is not None:
        lr_scheduler = instantiate(cfg.lr_scheduler, optimizer, num_training_steps=total_steps)
    if not resume:
        return lr_scheduler, 0, 0
    has_optimizer = "optimizer" in state  # not in a DCP folder's recipe state
    if world_size > 1 and has_optimizer:  # a full optimizer state dict into the shards
        _load_sharded_optimizer(model, optimizer, state.pop("optimizer"))
    epochs_run, global_step = restore_recipe_state(
        state,
        optimizer=optimizer if world_size == 1 and has_optimizer else None,
        lr_scheduler=lr_scheduler,
        sampler=sampler,
    )
    return lr_scheduler, epochs_run, global_step


def _load_sharded_optimizer(model: torch.nn.Module, optimizer: Any, full_sd: Any) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from tunesmith.training.expert_parallel import slice_expert_optimizer_state

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    full_sd = slice_expert_optimizer_state(model, full_sd)  # this rank's experts' state
    set_optimizer_state_dict(model, optimizer, full_sd, options=options)


def fused_adam(node: DictConfig, device: torch.device, world_size: int) -> dict[str, bool]:
    """``{"fused": True}`` for torch's Adam/AdamW when the config sets neither ``fused`` nor
    ``foreach``, on one process (FSDP2's sharded parameters keep torch's default): one kernel
    per step instead of a dozen elementwise passes over every parameter."""
    component = str(node.get("_component_", ""))
    adam = component.removeprefix("torch.optim.") in ("Adam", "AdamW", "adam.Adam", "adamw.AdamW")
    unset = node.get("fused") is None and node.get("foreach") is None
    if adam and component.startswith("torch.optim.") and unset and world_size == 1:
        return {"fused": True} if device.type != "meta" else {}
    return {}
