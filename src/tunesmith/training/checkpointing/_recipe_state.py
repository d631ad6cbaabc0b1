"""Recipe state for exact resume: optimizer, LR schedule, progress, sampler, RNG.

The recipe builds one dict with :func:`build_recipe_state`, merges it into the state
dict it passes to ``checkpointer.save_checkpoint(..., intermediate_checkpoint=True)``
(the checkpointer writes every key other than the weights to ``recipe_state.pt``), and
on resume hands the dict from ``checkpointer.load_checkpoint()`` to
:func:`restore_recipe_state`. Everything is stored as tensors / plain Python so it loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from tunesmith.training.checkpointing._atomic import atomic_torch_save
from tunesmith.training.checkpointing._files import safe_torch_load

__all__ = [
    "RECIPE_STATE_FNAME",
    "RecipeStateKeys",
    "capture_rng_state",
    "restore_rng_state",
    "build_recipe_state",
    "restore_recipe_state",
    "save_recipe_state",
    "load_recipe_state",
]

RECIPE_STATE_FNAME = "recipe_state.pt"


class RecipeStateKeys:
    """Key names inside a recipe-state dict (torchtune's names where torchtune has one)."""

    OPTIMIZER = "optimizer"
    LR_SCHEDULER = "lr_scheduler"
    EPOCHS_RUN = "epochs_run"
    STEPS_RUN = "steps_run"
    SEED = "seed"
    TOTAL_EPOCHS = "total_epochs"
    MAX_STEPS_PER_EPOCH = "max_steps_per_epoch"
    SAMPLER = "sampler"
    DATALOADER = "dataloader"
    RNG = "rng"


# Keys of a checkpoint dict that hold weights rather than recipe state.
WEIGHT_KEYS = ("model", "adapter", "adapter_config")


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, when present) RNG states, weights_only-loadable.

    ``generators``: extra named ``torch.Generator`` objects to include (e.g. the one given
    to the DataLoader, whose draws seed worker processes).
    """
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["generators"] = {name: g.get_state() for name, g in generators.items()}
    return state


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Inverse of :func:`capture_rng_state` (``generators`` are restored by name)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"RNG state has no generator {name!r}; it holds {sorted(saved)}")
        g.set_state(saved[name])


def build_recipe_state(
    *,
    epochs_run: int,
    steps_run: int,
    optimizer: _Stateful | None = None,
    lr_scheduler: _Stateful | None = None,
    sampler: _Stateful | None = None,
    dataloader: _Stateful | None = None,
    seed: int | None = None,
    total_epochs: int | None = None,
    max_steps_per_epoch: int | None = None,
    include_rng: bool = True,
    generators: Mapping[str, torch.Generator] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything besides weights that an exact resume needs, as one dict.

    ``epochs_run``: epochs fully finished; ``steps_run``: optimizer steps taken so far
    (global). ``sampler`` / ``dataloader``: anything with ``state_dict()`` (e.g.
    ``StatefulDistributedSampler``, whose state records the position inside the epoch).
    ``extra`` keys are stored as given (must be weights_only-loadable).
    """
    state: dict[str, Any] = {
        RecipeStateKeys.EPOCHS_RUN: int(epochs_run),
        RecipeStateKeys.STEPS_RUN: int(steps_run),
    }
    if optimizer is not None:
        state[RecipeStateKeys.OPTIMIZER] = optimizer.state_dict()
    if lr_scheduler is not None:
        state[RecipeStateKeys.LR_SCHEDULER] = lr_scheduler.state_dict()
    if sampler is not None:
        state[RecipeStateKeys.SAMPLER] = sampler.state_dict()
    if dataloader is not None:
        state[RecipeStateKeys.DATALOADER] = dataloader.state_dict()
    if seed is not None:
        state[RecipeStateKeys.SEED] = int(seed)
    if total_epochs is not None:
        state[RecipeStateKeys.TOTAL_EPOCHS] = int(total_epochs)
    if max_steps_per_epoch is not None:
        state[RecipeStateKeys.MAX_STEPS_PER_EPOCH] = int(max_steps_per_epoch)
    if include_rng:
        state[RecipeStateKeys.RNG] = capture_rng_state(generators)
    overlap = set(extra) & (set(state) | set(WEIGHT_KEYS))
    if overlap:
        raise ValueError(
            f"build_recipe_state: extra keys {sorted(overlap)} clash with reserved keys"
        )
    state.update(extra)
    return state


def restore_recipe_state(
    state: Mapping[str, Any],
    *,
    optimizer: _Stateful | None = None,
    lr_scheduler: _Stateful | None = None,
    sampler: _Stateful | None = None,
    dataloader: _Stateful | None = None,
    restore_rng: bool = True,
    generators: Mapping[str, torch.Generator] | None = None,
) -> tuple[int, int]:
    """Load the pieces of ``state`` into the given objects; returns ``(epochs_run, steps_run)``.

    Call it after the model, optimizer, scheduler and sampler are built and the weights
    loaded, and right before the training loop, so the restored RNG state is the one
    the interrupted run had at its step boundary. Give the DataLoader its own
    ``torch.Generator`` (and pass it in ``generators`` on save and restore): without one,
    every new DataLoader iterator draws from the global torch RNG, at a different moment
    in a resumed run than in the original.
    """
    missing = [k for k in (RecipeStateKeys.EPOCHS_RUN, RecipeStateKeys.STEPS_RUN) if k not in state]
    if missing:
        raise KeyError(
            f"recipe state lacks {missing}; the checkpoint was not saved with "
            "intermediate_checkpoint=True, so it cannot be resumed (set "
            "resume_from_checkpoint=False to start a fresh run from its weights)"
        )
    pairs = (
        (optimizer, RecipeStateKeys.OPTIMIZER),
        (lr_scheduler, RecipeStateKeys.LR_SCHEDULER),
        (sampler, RecipeStateKeys.SAMPLER),
        (dataloader, RecipeStateKeys.DATALOADER),
    )
    for obj, key in pairs:
        if obj is None:
            continue
        if key not in state:
            raise KeyError(
                f"recipe state has no {key!r} entry to restore; it holds {sorted(state)}"
            )
        obj.load_state_dict(state[key])
    if restore_rng and RecipeStateKeys.RNG in state:
        restore_rng_state(state[RecipeStateKeys.RNG], generators)
    return int(state[RecipeStateKeys.EPOCHS_RUN]), int(state[RecipeStateKeys.STEPS_RUN])


def save_recipe_state(state: Mapping[str, Any], path: str) -> None:
    """Write a recipe-state dict to ``path`` atomically (``torch.save``)."""
    atomic_torch_save(dict(state), path)


def load_recipe_state(path: str) -> dict[str, Any]:
    """Read a recipe-state dict written by :func:`save_recipe_state` (weights_only)."""
    state = safe_torch_load(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} does not hold a recipe-state dict")
    return dict(state)
