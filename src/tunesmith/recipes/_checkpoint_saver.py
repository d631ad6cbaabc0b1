"""The training recipes' saver: the model (+ PEFT adapter) and, for intermediate checkpoints,
the recipe state -- gathered to rank 0 in the checkpointer's format, or (with
:class:`~tunesmith.recipes._sharded_saves.ShardedSaves`) as DCP folders from every rank."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from tunesmith.modules.peft import is_adapter_key
from tunesmith.recipes._finetune_setup import adapter_config, full_state_dicts
from tunesmith.recipes._sharded_saves import ShardedSaves
from tunesmith.training.checkpointing._recipe_state import build_recipe_state
from tunesmith.training.distributed import barrier

__all__ = ["CheckpointSaver"]


class CheckpointSaver:
    """Saves the model (+ PEFT adapter) and, for intermediate checkpoints, the recipe state.

    Collective under FSDP2: every rank gathers, rank 0 writes; with ``sharded``
    (:class:`ShardedSaves`) intermediate saves are DCP folders every rank writes its shards
    to. ``step`` names a mid-epoch checkpoint; ``step_in_epoch`` gives the sampler position.
    """

    def __init__(
        self,
        cfg: DictConfig,
        checkpointer: Any,
        model: torch.nn.Module,
        optimizer: Any,
        lr_scheduler: Any,
        sampler: Any,
        *,
        rank: int,
        world_size: int,
        is_peft: bool,
        seed: int,
        epochs: int,
        accum: int,
        sharded: ShardedSaves | None = None,
    ) -> None:
        self.cfg, self.checkpointer, self.model, self.sharded = cfg, checkpointer, model, sharded
        self.optimizer, self.lr_scheduler, self.sampler = optimizer, lr_scheduler, sampler
        self.rank, self.world_size, self.is_peft = rank, world_size, is_peft
        self.seed, self.epochs, self.accum = seed, epochs, accum
        self.saved: Any = None  # the folder of the latest save (rank 0)

    def __call__(
        self,
        epoch: int,
        intermediate: bool,
        *,
        global_step: int,
        step_in_epoch: int,
        step: int | None = None,
    ) -> None:
        cfg = self.cfg
        if self.sharded is not None:
            self.sharded.finish()  # one save at a time (and the final one after the last)
            if intermediate:
                return self._save_sharded(epoch, global_step, step_in_epoch, step)
        model_sd, optim_sd = full_state_dicts(
            self.model, self.optimizer if intermediate else None, self.world_size
        )
        if self.rank == 0:
            to_save: dict[str, Any] = {"model": model_sd}
            if self.is_peft:
                to_save["adapter_config"] = {
                    **adapter_config(cfg),  # + parts trained fully next to LoRA: kept as trained
                    "fully_trained": list(getattr(self.model, "trainable_with_adapters", ())),
                }
                to_save["adapter"] = {k: v for k, v in model_sd.items() if is_adapter_key(k)}
            if intermediate:
                to_save.update(self._recipe_state(epoch, global_step, step_in_epoch))
                to_save["optimizer"] = optim_sd
            self.saved = self.checkpointer.save_checkpoint(
                to_save,
                epoch=epoch,
                intermediate_checkpoint=intermediate,
                adapter_only=bool(cfg.get("save_adapter_weights_only", False)) and self.is_peft,
                step=step,
            )
        barrier()

    def _recipe_state(self, epoch: int, global_step: int, step_in_epoch: int) -> dict[str, Any]:
        consumed = step_in_epoch * self.accum * int(self.cfg.batch_size)
        return build_recipe_state(
            epochs_run=epoch,
            steps_run=global_step,
            lr_scheduler=self.lr_scheduler,
            sampler=_SamplerAt(self.sampler, consumed),
            seed=self.seed,
            total_epochs=self.epochs,
            max_steps_per_epoch=self.cfg.get("max_steps_per_epoch"),
        )

    def _save_sharded(
        self, epoch: int, global_step: int, step_in_epoch: int, step: int | None
    ) -> None:
        assert self.sharded is not None
        self.sharded.save(
            self.model, self.optimizer, self._recipe_state(epoch, global_step, step_in_epoch),
            epoch=epoch, step=step, adapter_config=adapter_config(self.cfg) if self.is_peft else None,
        )  # fmt: skip

    def poll(self) -> None:
        if self.sharded is not None:
            self.sharded.poll()

    def finish(self) -> None:
        if self.sharded is not None:
            self.sharded.finish()


class _SamplerAt:
    """The sampler's state at ``consumed`` samples of this rank (not what the loader prefetched)."""

    def __init__(self, sampler: Any, consumed: int) -> None:
        self.sampler, self.consumed = sampler, consumed

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict(num_consumed=self.consumed)
