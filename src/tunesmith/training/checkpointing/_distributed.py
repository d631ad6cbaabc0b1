"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP) for multi-GPU runs.

Each rank writes its own shards of the model / optimizer state (DTensors from FSDP2)
into one DCP folder; recipe state that differs per rank (RNG, sampler position) goes
to ``recipe_state_rank{r}.pt``. The folder is staged and marked complete by rank 0
only after every rank finished (barrier), so a crash never leaves a loadable partial
checkpoint. At the end of training :func:`consolidate_dcp_to_hf` turns the newest
sharded checkpoint into a Hugging Face folder on one process.

Recipe usage::

    ckpt = DistributedCheckpointer(output_dir, keep_last_n_checkpoints=2)
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, opt)}
    ckpt.save_checkpoint(state, epoch, step=step, recipe_state=build_recipe_state(...))
    # resume (state holds correctly sharded destination tensors, loaded in place):
    recipe_state = ckpt.load_checkpoint(state)   # then set_model_state_dict(...) etc.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from tunesmith.training.checkpointing._atomic import (
    COMPLETE_MARKER,
    checkpoint_folder_name,
    fsync_dir,
    prune_checkpoints,
    publish_checkpoint_dir,
    remove_partial_checkpoints,
)
from tunesmith.training.checkpointing._recipe_state import load_recipe_state, save_recipe_state

__all__ = ["DistributedCheckpointer", "consolidate_dcp_to_hf", "load_dcp_full_state_dict"]

DCP_SUBDIR = "dcp"


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class DistributedCheckpointer:
    """Save / load sharded state with DCP into ``output_dir/distributed/{epoch_e|step_n}/dcp``.

    The ``distributed/`` sub-folder keeps these apart from the Hugging Face folders that
    :func:`consolidate_dcp_to_hf` writes into ``output_dir`` itself.

    Args:
        output_dir: shared folder (visible to every rank), the run's ``output_dir``.
        keep_last_n_checkpoints: keep only the newest n complete folders.
        resume_from_checkpoint: :meth:`load_checkpoint` reads the newest complete folder.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        keep_last_n_checkpoints: int | None = None,
        resume_from_checkpoint: bool = False,
    ) -> None:
        self._output_dir = Path(output_dir) / "distributed"
        self._keep_last_n = keep_last_n_checkpoints
        self._resume_from_checkpoint = resume_from_checkpoint
        rank, _ = _rank_world()
        if rank == 0:
            self._output_dir.mkdir(parents=True, exist_ok=True)
        _barrier()

    @property
    def output_dir(self) -> Path:
        return self._output_dir

    def latest(self) -> Path | None:
        """The newest intact complete checkpoint folder (same answer on every rank): newer
        folders whose files do not match their marker are skipped with a warning."""
        from tunesmith.training.checkpointing._integrity import newest_intact_checkpoint

        return newest_intact_checkpoint(self._output_dir)

    def save_checkpoint(
        self,
        state_dict: Mapping[str, Any],
        epoch: int,
        step: int | None = None,
        recipe_state: Mapping[str, Any] | None = None,
    ) -> Path:
        """Collective: every rank calls it with its sharded ``state_dict`` (tensors/DTensors).

        ``recipe_state`` (this rank's; see ``build_recipe_state``) is written per rank.
        """
        rank, world = _rank_world()
        name = checkpoint_folder_name(epoch, step)
        staging = self._output_dir / f".tmp-{name}"
        if rank == 0:
            remove_partial_checkpoints(self._output_dir)
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        _barrier()
        dcp.save(dict(state_dict), checkpoint_id=str(staging / DCP_SUBDIR))
        if recipe_state is not None:
            save_recipe_state(recipe_state, str(staging / f"recipe_state_rank{rank}.pt"))
        _barrier()
        final = self._output_dir / name
        if rank == 0:
            fsync_dir(staging / DCP_SUBDIR)
            publish_checkpoint_dir(
                staging,
                name,
                epoch=int(epoch),
                step=step,
                format="dcp",
                world_size=world,
                has_recipe_state=recipe_state is not None,
            )
            prune_checkpoints(self._output_dir, self._keep_last_n, protect=final)
        _barrier()
        return final

    def load_checkpoint(
        self, state_dict: dict[str, Any], folder: str | os.PathLike[str] | None = None
    ) -> dict[str, Any]:
        """Collective: load the newest complete (or the given) checkpoint into ``state_dict``
        in place; returns this rank's recipe state ({} when none was saved).
        """
        source = Path(folder) if folder is not None else self.latest()
        if source is None or not (source / COMPLETE_MARKER).is_file():
            raise FileNotFoundError(
                f"no complete distributed checkpoint in {str(self._output_dir)!r}; "
                "set resume_from_checkpoint=False to start fresh"
            )
        dcp.load(state_dict, checkpoint_id=str(source / DCP_SUBDIR))
        rank, _ = _rank_world()
        path = source / f"recipe_state_rank{rank}.pt"
        if not path.is_file():
            fallback = source / "recipe_state_rank0.pt"  # world size changed: reuse rank 0's
            path = fallback if fallback.is_file() else path
        return load_recipe_state(str(path)) if path.is_file() else {}


def load_dcp_full_state_dict(dcp_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a whole DCP checkpoint into one process as plain tensors (no process group)."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    _load_state_dict(
        state,
        storage_reader=dcp.FileSystemReader(str(dcp_dir)),
        planner=_EmptyStateDictLoadPlanner(),
        no_dist=True,
    )
    return state


def consolidate_dcp_to_hf(
    checkpoint_folder: str | os.PathLike[str],
    hf_checkpointer: Any,
    epoch: int,
    step: int | None = None,
    model_key: str = "model",
) -> Path:
    """Rank 0: write the model weights of a DCP checkpoint folder in the base format.

    ``hf_checkpointer`` is the run's weight checkpointer (``FullModelHFCheckpointer`` or any
    other with ``load_checkpoint`` / ``save_checkpoint``); its ``load_checkpoint()`` must have
    run (it records the input's sharding and dtypes). Returns the written folder.
    """
    folder = Path(checkpoint_folder)
    full = load_dcp_full_state_dict(folder / DCP_SUBDIR)
    if model_key not in full:
        raise KeyError(
            f"DCP checkpoint {folder} has no {model_key!r} entry; it holds {sorted(full)}"
        )
    model = {k: v for k, v in full[model_key].items() if isinstance(v, torch.Tensor)}
    return hf_checkpointer.save_checkpoint({"model": model}, epoch=epoch, step=step)
