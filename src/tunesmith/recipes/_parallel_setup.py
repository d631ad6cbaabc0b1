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

__all__ = ["parallel_layout", "tensor_parallel"]


def parallel_layout(cfg: DictConfig, world_size: int, device: torch.device) -> tuple[Any, Any]:
    """``(ParallelDims, DeviceMesh or None)`` from the parallelism keys (``tensor_parallel_dim``,
    ``data_parallel_shard_dim``, ``data_parallel_replicate_dim``), checked before any weights
    load: the degrees against the world size, the TP degree against the model's heads (on a
    meta-device build). The mesh is None for one process or plain FSDP2 over every rank."""
    from tunesmith.training.parallel_dims import ParallelDims

    dims = ParallelDims.from_config(cfg, world_size)
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
