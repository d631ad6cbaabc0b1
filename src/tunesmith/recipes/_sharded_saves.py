"""Sharded (DCP) intermediate checkpoints for the training recipes, straight from every rank.

Two top-level keys turn them on:

- ``intermediate_checkpoint_format: dcp`` -- every intermediate save (``save_every_n_steps``,
  epoch ends before the last, a SIGTERM) is one ``torch.distributed.checkpoint`` folder,
  ``<checkpointer.output_dir>/distributed/{step_N|epoch_E}``, written by each rank from its
  own shards: the trained parameters (all of them in full finetuning, only the adapters
  with LoRA/QLoRA), the optimizer state (keyed by parameter name) and each rank's recipe
  state (schedule, sampler position, RNG). Nothing is gathered on rank 0.
- ``enable_async_checkpointing: True`` (torchtune's key) -- the same, written by
  ``dcp.async_save`` while the next steps run; a save is published (``.complete`` marker,
  renamed from ``.tmp-*``) once every rank's write is done, and always before the next save
  and before the process exits.

The final save still writes the checkpointer's own format (HF, Meta, torchtune). Resume
(``resume_from_checkpoint: True``) reads the newest complete DCP folder at any world size:
the model is built from the base checkpoint, then its trained tensors and the optimizer
are loaded resharded in place. ``tunesmith consolidate`` writes a DCP folder in the run's
weight format on demand.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tunesmith.config import ConfigError
from tunesmith.utils import get_logger

__all__ = ["ShardedSaves", "open_checkpointers", "wants_sharded_saves"]

log = get_logger(__name__)

FORMATS = ("dcp",)


def wants_sharded_saves(cfg: DictConfig) -> bool:
    """Whether the config asks for DCP intermediate checkpoints (either key); checks the value
    of ``intermediate_checkpoint_format`` and the optimizer (one-line errors)."""
    fmt = cfg.get("intermediate_checkpoint_format")
    if fmt is not None and str(fmt) not in FORMATS:
        raise ConfigError(
            f"intermediate_checkpoint_format={fmt} is not one of {list(FORMATS)}: set it to dcp "
            "(sharded saves from every rank) or drop the key (the checkpointer's own format)",
            key="intermediate_checkpoint_format",
        )
    wanted = fmt is not None or bool(cfg.get("enable_async_checkpointing", False))
    if wanted and cfg.get("optimizer_in_bwd", False):
        raise ConfigError(
            "sharded intermediate checkpoints (intermediate_checkpoint_format / "
            "enable_async_checkpointing) cannot hold optimizer_in_bwd's per-parameter "
            "optimizers: set optimizer_in_bwd=False or drop those keys",
            key="optimizer_in_bwd",
        )
    return wanted


def open_checkpointers(cfg: DictConfig, resume: bool) -> tuple[Any, ShardedSaves | None]:
    """The training recipes' checkpointers: ``(cfg.checkpointer, ShardedSaves or None)``.
    With DCP saves a resumed run's checkpointer reads the base weights (the trained tensors
    and optimizer come from the newest DCP folder: :meth:`ShardedSaves.recipe_state`, then
    :meth:`ShardedSaves.load`)."""
    from tunesmith.recipes._finetune_setup import open_checkpointer

    dcp_saves = wants_sharded_saves(cfg)  # DCP intermediate saves (every rank's shards)
    checkpointer = open_checkpointer(cfg, resume, resume_weights=resume and not dcp_saves)
    return checkpointer, ShardedSaves(cfg) if dcp_saves else None


class ShardedSaves:
    """The DCP side of a run's checkpoints (collective: every rank builds and calls it)."""

    def __init__(self, cfg: DictConfig) -> None:
        from tunesmith.training.checkpointing import DistributedCheckpointer

        node = cfg.checkpointer
        keep = node.get("keep_last_n_checkpoints") or cfg.get("keep_last_n_checkpoints")
        self.async_save = bool(cfg.get("enable_async_checkpointing", False))
        self.checkpointer = DistributedCheckpointer(
            node.output_dir,
            keep_last_n_checkpoints=int(keep) if keep else None,
            async_save=self.async_save,
        )
        self._info = {"checkpointer": OmegaConf.to_container(node, resolve=True)}

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ShardedSaves | None:
        return cls(cfg) if wants_sharded_saves(cfg) else None

    # ------------------------------------------------------------------------------ resume
    def recipe_state(self) -> dict[str, Any]:
        """This rank's recipe state of the newest complete DCP folder (read before the model
        is built: it holds the seed); a one-line error when there is none."""
        from tunesmith.training.checkpointing import load_recipe_state

        self._source = self.checkpointer.latest()
        if self._source is None:
            raise ConfigError(
                f"resume_from_checkpoint=True but {self.checkpointer.output_dir} holds no "
                "complete DCP checkpoint: set resume_from_checkpoint=False to start fresh",
                key="resume_from_checkpoint",
            )
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        path = self._source / f"recipe_state_rank{rank}.pt"
        if not path.is_file():  # the world size grew: take rank 0's (same schedule, sampler)
            path = self._source / "recipe_state_rank0.pt"
        log.info("resuming from %s", self._source)
        return load_recipe_state(str(path))

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the trained tensors and the optimizer of :meth:`recipe_state`'s folder into
        ``model`` / ``optimizer`` in place, resharded to this run's layout (any world size).
        Call it after the LR scheduler is built (the optimizer's saved ``lr`` wins)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from tunesmith.training.checkpointing._distributed import DCP_SUBDIR
        from tunesmith.training.expert_parallel import expert_slices_to_local

        state = _sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=str(self._source / DCP_SUBDIR))
        expert_slices_to_local(state)  # the experts' slices were loaded in place
        set_model_state_dict(model, state["model"], options=_options())
        set_optimizer_state_dict(model, optimizer, state["optimizer"])

    # -------------------------------------------------------------------------------- save
    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        recipe_state: dict[str, Any],
        *,
        epoch: int,
        step: int | None,
        adapter_config: dict[str, Any] | None,
    ) -> None:
        """Every rank writes its shards (asynchronously with ``enable_async_checkpointing``)."""
        info = {**self._info, "adapter_config": adapter_config}
        self.checkpointer.save_checkpoint(
            _sharded_state(model, optimizer), epoch, step=step, recipe_state=recipe_state,
            info=info,
        )  # fmt: skip

    def poll(self) -> None:
        """Publish a finished async save (call once per step; a no-op otherwise)."""
        if self.checkpointer.pending:
            self.checkpointer.poll()

    def finish(self) -> None:
        """Wait for a pending save and publish it (before the final save and at exit)."""
        self.checkpointer.finish()


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"model": trained parameters, "optimizer": its state by name}``: this rank's shards
    (DTensors under FSDP2, plain tensors on one process; expert-parallel slices as DTensors
    over the expert group); frozen (base, NF4) weights stay out."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from tunesmith.training.expert_parallel import expert_slices_to_dtensors

    state = {
        "model": get_model_state_dict(model, options=_options()),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    expert_slices_to_dtensors(model, state)  # expert parallelism: one [E, ...] tensor each
    return state
