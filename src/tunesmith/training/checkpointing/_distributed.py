"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP) for multi-GPU runs.

Each rank writes its own shards of the model / optimizer state (DTensors from FSDP2)
into one DCP folder; recipe state that differs per rank (RNG, sampler position) goes
to ``recipe_state_rank{r}.pt``. The folder is staged and marked complete by rank 0
only after every rank finished (barrier), so a crash never leaves a loadable partial
checkpoint. At the end of training :func:`consolidate_dcp_to_hf` turns the newest
sharded checkpoint into a Hugging Face folder on one process.

``async_save=True`` hands the write to ``dcp.async_save`` (state copied to CPU first, then
written by a background thread over a gloo group of its own): training continues while
the files are written. The folder stays ``.tmp-*`` (invisible to resume, deleted by the
next save) until :meth:`DistributedCheckpointer.finish` (called by :meth:`poll` once every
rank's write is done, by the next save, and at exit) publishes it with its marker.

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

from tunesmith.training.checkpointing._atomic import (
    COMPLETE_MARKER,
    atomic_write_json,
    checkpoint_folder_name,
    fsync_dir,
    prune_checkpoints,
    publish_checkpoint_dir,
    remove_partial_checkpoints,
)
from tunesmith.training.checkpointing._recipe_state import load_recipe_state, save_recipe_state

__all__ = [
    "DistributedCheckpointer",
    "consolidate_dcp_checkpoint",
    "consolidate_dcp_to_hf",
    "load_dcp_full_state_dict",
    "read_dcp_info",
    "resolve_dcp_folder",
]

DCP_SUBDIR = "dcp"

DCP_INFO = "tunesmith_dcp.json"
"""What a consolidation needs besides the tensors (checkpointer config, adapter config)."""


def _dcp() -> Any:
    """``torch.distributed.checkpoint``, imported on first use: a run that never saves or
    resumes a sharded checkpoint does not hold it (and the asyncio etc. it pulls: ~3 MiB of
    every rank's resident memory while the model loads, benchmarks/NOTES.md §16)."""
    import torch.distributed.checkpoint as dcp

    return dcp


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
        async_save: write with ``dcp.async_save`` (see the module doc); collective to build
            (it makes a gloo group for the background writes).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        keep_last_n_checkpoints: int | None = None,
        resume_from_checkpoint: bool = False,
        async_save: bool = False,
    ) -> None:
        self._output_dir = Path(output_dir) / "distributed"
        self._keep_last_n = keep_last_n_checkpoints
        self._resume_from_checkpoint = resume_from_checkpoint
        self._async = async_save
        self._pending: tuple[Any, Path, str, dict[str, Any]] | None = None
        self._group = None
        if async_save and dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")  # writes never queue behind training
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
        info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Collective: every rank calls it with its sharded ``state_dict`` (tensors/DTensors).

        ``recipe_state`` (this rank's; see ``build_recipe_state``) is written per rank;
        ``info`` (JSON, rank 0's) goes to ``tunesmith_dcp.json`` for :func:`consolidate_dcp_checkpoint`.
        Returns the folder's final path; with ``async_save`` it appears there only once
        :meth:`finish` ran (an earlier pending save is finished first).
        """
        self.finish()
        rank, world = _rank_world()
        name = checkpoint_folder_name(epoch, step)
        staging = self._output_dir / f".tmp-{name}"
        if rank == 0:
            remove_partial_checkpoints(self._output_dir)
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        _barrier()
        if recipe_state is not None:
            save_recipe_state(recipe_state, str(staging / f"recipe_state_rank{rank}.pt"))
        if rank == 0 and info is not None:
            atomic_write_json(staging / DCP_INFO, dict(info))
        marker = {
            "epoch": int(epoch),
            "step": step,
            "format": "dcp",
            "world_size": world,
            "has_recipe_state": recipe_state is not None,
        }
        checkpoint_id = str(staging / DCP_SUBDIR)
        if self._async:
            future = _dcp().async_save(
                dict(state_dict), checkpoint_id=checkpoint_id, process_group=self._group
            )
            self._pending = (future, staging, name, marker)
        else:
            _dcp().save(dict(state_dict), checkpoint_id=checkpoint_id)
            self._pending = (None, staging, name, marker)
            self.finish()
        return self._output_dir / name

    @property
    def pending(self) -> bool:
        """Whether a save was started and not yet published."""
        return self._pending is not None

    def poll(self) -> bool:
        """Collective (cheap; a no-op without a pending save): publish the pending async save
        when every rank's write is done. Returns True when it published one."""
        if self._pending is None:
            return False
        done = torch.tensor(int(self._pending[0] is None or self._pending[0].done()))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(done, op=dist.ReduceOp.MIN, group=self._group)
        if not int(done):
            return False
        self.finish()
        return True

    def finish(self) -> Path | None:
        """Collective: wait for the pending save, then publish it (marker, rename, prune).
        Call it before the process exits; returns the published folder (None if none)."""
        if self._pending is None:
            return None
        future, staging, name, marker = self._pending
        self._pending = None
        if future is not None:
            future.result()
        _barrier()
        final = self._output_dir / name
        if _rank_world()[0] == 0:
            fsync_dir(staging / DCP_SUBDIR)
            publish_checkpoint_dir(staging, name, **marker)
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
        _dcp().load(state_dict, checkpoint_id=str(source / DCP_SUBDIR))
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
        storage_reader=_dcp().FileSystemReader(str(dcp_dir)),
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


def read_dcp_info(checkpoint_folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``tunesmith_dcp.json`` a recipe wrote beside a DCP checkpoint ({} when absent)."""
    import json

    path = Path(checkpoint_folder) / DCP_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_dcp_folder(path: str | os.PathLike[str]) -> Path:
    """A complete DCP checkpoint folder from what a user names: the folder itself, a run's
    ``distributed/`` folder or its ``output_dir`` (then the newest intact one)."""
    from tunesmith.training.checkpointing._atomic import read_complete_marker
    from tunesmith.training.checkpointing._integrity import newest_intact_checkpoint
    from tunesmith.utils._integrity import CheckpointNotFoundError

    folder = Path(path)
    marker = read_complete_marker(folder)
    if marker is not None and marker.get("format") == "dcp":
        return folder
    for root in (folder, folder / "distributed"):
        found = newest_intact_checkpoint(root) if root.is_dir() else None
        if found is not None and (read_complete_marker(found) or {}).get("format") == "dcp":
            return found
    raise CheckpointNotFoundError(
        f"no complete DCP checkpoint ({path}): name <output_dir>/distributed/step_N of a run "
        "saved with intermediate_checkpoint_format=dcp or enable_async_checkpointing=True"
    )


def consolidate_dcp_checkpoint(
    checkpoint_folder: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    checkpointer: Mapping[str, Any] | None = None,
    format: str | None = None,
) -> Path:
    """One process, no process group: turn a complete DCP checkpoint a recipe wrote (see
    :func:`resolve_dcp_folder` for what may be named) into the run's own weight format (HF,
    Meta, torchtune) in ``output_dir/<step_N|epoch_E>``; returns that folder.

    The run's checkpointer node (from ``tunesmith_dcp.json``, or ``checkpointer``) reads the
    base weights: a LoRA/DoRA checkpoint holds only the trained tensors, which are laid over
    them (adapters merged, the PEFT adapter written too, as the recipe's own saves do; for
    QLoRA the merge is onto the unquantized base). ``format`` (``hf`` ...) must be the run's
    checkpointer's. The DCP folder is only read.
    """
    from omegaconf import OmegaConf

    from tunesmith.config import instantiate
    from tunesmith.training.checkpointing._atomic import read_complete_marker
    from tunesmith.training.checkpointing._integrity import verify_checkpoint
    from tunesmith.utils._integrity import CheckpointError

    folder = resolve_dcp_folder(checkpoint_folder)
    marker = read_complete_marker(folder) or {}
    if (problem := verify_checkpoint(folder)) is not None:
        raise CheckpointError(f"the DCP checkpoint is damaged ({folder}): {problem}")
    info = read_dcp_info(folder)
    node = dict(checkpointer or info.get("checkpointer") or {})
    if not node:
        raise CheckpointError(
            f"the DCP checkpoint names no checkpointer ({folder / DCP_INFO} is missing): "
            "pass the run's checkpointer config"
        )
    node.update(output_dir=str(output_dir), resume_from_checkpoint=False)
    ckpt = instantiate(OmegaConf.create(node))
    if format is not None and format != ckpt.format_name:
        raise CheckpointError(
            f"--format {format} but the run saved with {node.get('_component_')} "
            f"(format {ckpt.format_name}) ({folder}): consolidation writes the run's own format; "
            f"pass --format {ckpt.format_name} or leave it out"
        )
    weights = dict(ckpt.load_checkpoint()["model"])
    trained = load_dcp_full_state_dict(folder / DCP_SUBDIR).get("model")
    if not trained:
        raise CheckpointError(f"the DCP checkpoint holds no 'model' entry ({folder})")
    weights.update({k: v for k, v in trained.items() if isinstance(v, torch.Tensor)})
    state: dict[str, Any] = {"model": weights}
    if info.get("adapter_config"):
        state["adapter_config"] = info["adapter_config"]
    return ckpt.save_checkpoint(state, epoch=int(marker["epoch"]), step=marker.get("step"))
