"""Parallel layout of a training recipe: the mesh from the parallelism keys, tensor parallelism
from ``tensor_parallel_plan``. Both turn a user's mistake into one :class:`ConfigError` line,
before weights load (``parallel_layout``) or before they are materialised (``tensor_parallel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from tunesmith.config import ConfigError, instantiate

__all__ = ["expert_parallel_degree", "parallel_layout", "tensor_parallel"]


def parallel_layout(cfg: DictConfig, world_size: int, device: torch.device) -> tuple[Any, Any]:
    """``(ParallelDims, DeviceMesh or None)`` from the parallelism keys (``tensor_parallel_dim``,
    ``data_parallel_shard_dim``, ``data_parallel_replicate_dim``), checked before any weights
    load: the degrees against the world size, the TP degree against the model's heads (on a
    meta-device build). The mesh is None for one process or plain FSDP2 over every rank."""
    from tunesmith.training.parallel_dims import ParallelDims

    dims = ParallelDims.from_config(cfg, world_size)
    _check_expert_parallel(cfg, dims, world_size)
    if dims.tp > 1:
        from tunesmith.training.tensor_parallel import check_tp_degree

        with torch.device("meta"):
            model = instantiate(cfg.model)
        try:
            check_tp_degree(model, dims.tp)
        except ValueError as exc:
            raise ConfigError(str(exc), key="tensor_parallel_dim") from None
        del model
    mesh = dims.build_mesh(device.type) if world_size > 1 and dims.needs_mesh else None
    return dims, mesh


def expert_parallel_degree(cfg: DictConfig) -> int:
    """``expert_parallel_dim`` (default 1), as :func:`parallel_layout` checked it."""
    return int(cfg.get("expert_parallel_dim") or 1)


def _check_expert_parallel(cfg: DictConfig, dims: Any, world_size: int) -> None:
    """``expert_parallel_dim``: 1 (default), or every rank of a plain FSDP2 run (experts split
    over all ranks, the rest sharded by FSDP2); checked on a meta build before any weights."""
    raw = cfg.get("expert_parallel_dim")
    ep = 1 if raw is None else raw
    key = "expert_parallel_dim"
    if isinstance(ep, bool) or not isinstance(ep, int) or ep < 1:
        raise ConfigError(f"expert_parallel_dim={raw!r}: give an integer >= 1", key=key)
    if ep == 1:
        return
    if ep != world_size or dims.tp > 1 or dims.dp_replicate > 1:
        raise ConfigError(
            f"expert_parallel_dim={ep} with {world_size} processes, tensor_parallel_dim="
            f"{dims.tp}, data_parallel_replicate_dim={dims.dp_replicate}: expert parallelism "
            "splits the experts over every rank of a plain FSDP2 run; set it to the world size "
            "with tensor_parallel_dim=1 and data_parallel_replicate_dim=1, or to 1",
            key=key,
        )
    sharded = cfg.get("intermediate_checkpoint_format") or cfg.get("enable_async_checkpointing")
    if cfg.get("resume_from_checkpoint", False) or sharded:
        raise ConfigError(
            f"expert_parallel_dim={ep} with resume_from_checkpoint / sharded (dcp, async) "
            "intermediate saves: the optimizer state of the expert slices is not gathered "
            "yet; start a fresh run with expert_parallel_dim: 1 to resume, or drop those keys",
            key=key,
        )
    if cfg.get("clip_grad_norm") is not None or cfg.get("optimizer_in_bwd", False):
        raise ConfigError(
            f"expert_parallel_dim={ep} with clip_grad_norm / optimizer_in_bwd: the expert "
            "slices are not FSDP2 parameters, so neither covers them yet; set clip_grad_norm: "
            "null and optimizer_in_bwd: False",
            key=key,
        )
    from tunesmith.modules.moe import moe_layers

    with torch.device("meta"):
        model = instantiate(cfg.model)
    layers = list(moe_layers(model))
    if not layers:
        raise ConfigError(
            f"expert_parallel_dim={ep}: the model has no mixture-of-experts layers; set it to 1",
            key=key,
        )
    n = layers[0].router.num_experts
    if n % ep:
        raise ConfigError(
            f"expert_parallel_dim={ep} does not divide num_experts={n}: pick a divisor of {n}",
            key=key,
        )


def tensor_parallel(model: nn.Module, cfg: DictConfig, tp_mesh: Any) -> None:
    """Apply ``cfg.tensor_parallel_plan`` (a ``_component_`` returning ``{fqn: style}``, called
    with ``model=`` when it takes it; torchtune's names resolve to tunesmith's plan) or the
    default per-layer-type plan over ``tp_mesh``; a user mistake is one ConfigError line."""
    import inspect

    from tunesmith.config import resolve_component
    from tunesmith.training.tensor_parallel import apply_tensor_parallel

    plan = None
    node = cfg.get("tensor_parallel_plan")
    if node is not None:
        fn = resolve_component(str(node.get("_component_")))
        params = inspect.signature(fn).parameters
        plan = instantiate(node, **({"model": model} if "model" in params else {}))
        if not isinstance(plan, Mapping):
            raise ConfigError(
                f"tensor_parallel_plan._component_={node.get('_component_')} returned "
                f"{type(plan).__name__}, not a dict {{module name: ParallelStyle}}",
                key="tensor_parallel_plan",
            )
        plan = dict(plan)
    try:
        apply_tensor_parallel(model, tp_mesh, plan)
    except ValueError as exc:
        raise ConfigError(str(exc), key="tensor_parallel_dim") from None
