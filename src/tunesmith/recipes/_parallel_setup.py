"""Parallel layout of a training recipe: the mesh from the parallelism keys (tensor, context and
data parallel), tensor parallelism
from ``tensor_parallel_plan`` (or the default plan, with ``sequence_parallel``). Both turn a user's mistake into one :class:`ConfigError` line,
before weights load (``parallel_layout``) or before they are materialised (``tensor_parallel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from tunesmith.config import ConfigError, instantiate

__all__ = [
    "context_parallel_request",
    "expert_parallel_degree",
    "generation_mesh",
    "parallel_layout",
    "tensor_parallel",
]


def parallel_layout(
    cfg: DictConfig,
    world_size: int,
    device: torch.device,
    *,
    context_parallel: bool = False,
) -> tuple[Any, Any]:
    """``(ParallelDims, DeviceMesh or None)`` from the parallelism keys (``tensor_parallel_dim``,
    ``data_parallel_shard_dim``, ``data_parallel_replicate_dim``, ``context_parallel_dim``),
    checked before any weights load: the degrees against the world size, the TP degree against
    the model's heads and context parallelism against the model's attention and the sequence
    length (on a meta-device build). The mesh is None for one process or plain FSDP2 over
    every rank. ``context_parallel``: the calling recipe shards sequences over the ``cp``
    ranks (finetune); any other refuses ``context_parallel_dim > 1`` (its ``cp`` ranks would
    each train the whole sequence while FSDP2 sums their gradients: wrong, silently)."""
    from tunesmith.training.parallel_dims import ParallelDims

    dims = ParallelDims.from_config(cfg, world_size)
    if dims.cp > 1 and not context_parallel:
        raise ConfigError(
            f"context_parallel_dim={dims.cp}: this recipe does not split sequences over ranks "
            "(context parallelism is in the finetune recipe): set context_parallel_dim=1",
            key="context_parallel_dim",
        )
    if dims.cp > 1:
        _check_context_parallel_config(cfg, dims.cp)
    _check_expert_parallel(cfg, dims, world_size)
    if dims.tp > 1:
        check_model_for_tp(cfg.model, dims.tp)
    if cfg.get("sequence_parallel", False) and dims.tp == 1:
        raise ConfigError(
            "sequence_parallel=True splits the sequence over the tensor-parallel ranks: set "
            "tensor_parallel_dim > 1, or sequence_parallel=False",
            key="sequence_parallel",
        )
    if dims.cp > 1:
        from tunesmith.training.context_parallel import (
            check_context_parallel_model,
            context_parallel_method,
        )

        with torch.device("meta"):
            model = instantiate(cfg.model)
        why = check_context_parallel_model(model)
        if why is not None:
            raise ConfigError(
                f"context_parallel_dim={dims.cp}: {why}; context parallelism splits "
                "decoder self-attention over full causal (or packed) masks only: set "
                "context_parallel_dim=1",
                key="context_parallel_dim",
            )
        try:  # the heads of each tensor-parallel rank must divide by cp for ulysses
            context_parallel_method(context_parallel_request(cfg), model, dims.cp, dims.tp)
        except ValueError as exc:
            raise ConfigError(str(exc), key="context_parallel_method") from None
        del model
    mesh = dims.build_mesh(device.type) if world_size > 1 and dims.needs_mesh else None
    return dims, mesh


def check_model_for_tp(model_cfg: DictConfig, tp: int, key: str = "model") -> None:
    """One ConfigError line, before any weights load, when the model ``model_cfg`` builds (on
    the meta device) cannot be split ``tp`` ways: heads that do not divide, NF4 (QLoRA) weights
    whose pieces would not be whole NF4 blocks, QDoRA."""
    from tunesmith.training.tensor_parallel import check_tp_degree, check_tp_layers

    with torch.device("meta"):
        model = instantiate(model_cfg)
    try:
        check_tp_degree(model, tp)
    except ValueError as exc:
        raise ConfigError(str(exc), key="tensor_parallel_dim") from None
    try:
        check_tp_layers(model, tp)
    except ValueError as exc:
        degree = str(exc).startswith("tensor_parallel_dim=")
        raise ConfigError(str(exc), key="tensor_parallel_dim" if degree else key) from None


def generation_mesh(cfg: DictConfig, world_size: int, device: torch.device) -> Any:
    """The 1-D ``("tp",)`` mesh of a generation run under torchrun (torchtune's
    ``dev/generate_v2_distributed``: every rank holds a tensor-parallel slice, so
    ``tensor_parallel_dim`` defaults to and must equal the world size), or None for one
    process. Checked against the model's heads before any weights load."""
    raw = cfg.get("tensor_parallel_dim")
    tp = world_size if raw is None else raw
    if isinstance(tp, bool) or not isinstance(tp, int) or tp != world_size:
        raise ConfigError(
            f"tensor_parallel_dim={raw!r}: generation splits the model over every process, so "
            f"it must equal the world size {world_size}: drop the key or set it to {world_size}",
            key="tensor_parallel_dim",
        )
    if world_size == 1:
        return None
    check_model_for_tp(cfg.model, tp)
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (tp,), mesh_dim_names=("tp",))


def context_parallel_request(cfg: DictConfig) -> str:
    """The context-parallel method asked for: ``context_parallel_method`` (``auto``, the
    default: head-sharded ``ulysses`` when the heads divide by cp, else ``allgather``), or
    ``allgather`` when torchtune's ``context_parallel_rotate_method: allgather`` is set (torch
    ring attention's key/value all-gather, which tunesmith's allgather method is). Checked by
    :func:`parallel_layout`; any other rotate method is a ConfigError there."""
    method = cfg.get("context_parallel_method")
    if method is None:
        rotate = cfg.get("context_parallel_rotate_method")
        return "allgather" if rotate == "allgather" else "auto"
    return str(method)


def _check_context_parallel_config(cfg: DictConfig, cp: int) -> None:
    """One ConfigError line for what context parallelism cannot run: an unknown
    ``context_parallel_method``, a ``context_parallel_rotate_method`` other than torchtune's
    default ``allgather`` (torch ring attention's all-to-all rotation is not implemented) or
    one contradicting the method, a sequence length (the tokenizer's ``max_seq_len``, which
    packs fill) not divisible by ``2 * cp`` (the shard chunks), or a validation pass
    (``run_val_every_n_steps``: it runs unsharded)."""
    from tunesmith.training.context_parallel import METHODS

    method = cfg.get("context_parallel_method")
    if method is not None and method not in METHODS:
        raise ConfigError(
            f"context_parallel_method={method!r}: choose one of {', '.join(METHODS)} (auto: "
            "ulysses when the heads divide by context_parallel_dim, else allgather)",
            key="context_parallel_method",
        )
    rotate = cfg.get("context_parallel_rotate_method")
    if rotate is not None and rotate != "allgather":
        raise ConfigError(
            f"context_parallel_rotate_method={rotate!r}: tunesmith does not run torch ring "
            "attention's all-to-all key/value rotation; remove the key (head-sharded "
            "all-to-all attention is context_parallel_method: ulysses) or set 'allgather'",
            key="context_parallel_rotate_method",
        )
    if rotate is not None and method not in (None, "allgather"):
        raise ConfigError(
            f"context_parallel_rotate_method={rotate!r} all-gathers keys and values but "
            f"context_parallel_method={method!r}: remove one of the two keys",
            key="context_parallel_rotate_method",
        )
    max_len = (cfg.get("tokenizer") or {}).get("max_seq_len")
    if max_len is not None and int(max_len) % (2 * cp):
        raise ConfigError(
            f"tokenizer.max_seq_len={max_len} is not divisible by 2 x context_parallel_dim="
            f"{2 * cp}: each sequence is cut into {2 * cp} equal chunks; set max_seq_len to a "
            f"multiple of {2 * cp}",
            key="context_parallel_dim",
        )
    if cfg.get("run_val_every_n_steps") and cfg.get("dataset_val") is not None:
        raise ConfigError(
            f"context_parallel_dim={cp} does not run the validation pass "
            "(run_val_every_n_steps with dataset_val): set run_val_every_n_steps=null or "
            "context_parallel_dim=1",
            key="context_parallel_dim",
        )


def expert_parallel_degree(cfg: DictConfig) -> int:
    """``expert_parallel_dim`` (default 1), as :func:`parallel_layout` checked it."""
    return int(cfg.get("expert_parallel_dim") or 1)


def _check_expert_parallel(cfg: DictConfig, dims: Any, world_size: int) -> None:
    """``expert_parallel_dim``: 1 (default), or every rank of an FSDP2 / HSDP run (experts split
    over all ranks, the rest sharded or replicated by FSDP2); checked on a meta build before
    any weights."""
    raw = cfg.get("expert_parallel_dim")
    ep = 1 if raw is None else raw
    key = "expert_parallel_dim"
    if isinstance(ep, bool) or not isinstance(ep, int) or ep < 1:
        raise ConfigError(f"expert_parallel_dim={raw!r}: give an integer >= 1", key=key)
    if ep == 1:
        return
    # the experts split over every rank; the other weights FSDP2-sharded or HSDP-replicated
    # (data_parallel_replicate_dim: torch's own HSDP; the expert slices stay outside FSDP2)
    if ep != world_size or dims.tp > 1 or dims.cp > 1:
        raise ConfigError(
            f"expert_parallel_dim={ep} with {world_size} processes, tensor_parallel_dim="
            f"{dims.tp}, context_parallel_dim={dims.cp}: expert parallelism splits the experts "
            "over every rank of an FSDP2 / HSDP run; set it to the world size with "
            "tensor_parallel_dim=1 and context_parallel_dim=1, or to 1",
            key=key,
        )
    # (full-state saves gather the slices' optimizer state; sharded (DCP) saves write them as
    # DTensors over the expert group: training.expert_parallel.expert_slices_to_dtensors)
    if cfg.get("enable_async_checkpointing", False):  # (a 2-rank gloo run hung in it)
        raise ConfigError(
            f"expert_parallel_dim={ep} with enable_async_checkpointing: the background save "
            "does not yet run beside the experts' all-to-all; set enable_async_checkpointing: "
            "False (intermediate_checkpoint_format: dcp saves sharded, synchronously)",
            key=key,
        )
    if cfg.get("optimizer_in_bwd", False):  # (clip_grad_norm covers the slices: gradients.py)
        raise ConfigError(
            f"expert_parallel_dim={ep} with optimizer_in_bwd: the expert slices are not FSDP2 "
            "parameters, so the per-parameter optimizers do not cover them yet; set "
            "optimizer_in_bwd: False",
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


def tensor_parallel(model: nn.Module, cfg: DictConfig, tp_mesh: Any, fsdp_degree: int = 1) -> None:
    """Apply ``cfg.tensor_parallel_plan`` (a ``_component_`` returning ``{fqn: style}``, called
    with ``model=`` when it takes it; torchtune's names resolve to tunesmith's plan) or the
    default per-layer-type plan over ``tp_mesh`` (``fsdp_degree``: the FSDP2 shard degree
    that follows); a user mistake is one ConfigError line."""
    import inspect

    from tunesmith.config import resolve_component
    from tunesmith.training.tensor_parallel import apply_tensor_parallel

    plan = None
    node = cfg.get("tensor_parallel_plan")
    if bool(cfg.get("sequence_parallel", False)):
        if node is not None:
            raise ConfigError(
                "sequence_parallel=True builds tunesmith's per-layer-type plan with sequence "
                "parallelism: drop tensor_parallel_plan, or set sequence_parallel=False and "
                "declare SequenceParallel entries in your plan",
                key="sequence_parallel",
            )
        from tunesmith.training.tensor_parallel import decoder_tp_plan

        try:
            plan = decoder_tp_plan(model, sequence_parallel=True)
        except ValueError as exc:
            raise ConfigError(str(exc), key="sequence_parallel") from None
    elif node is not None:
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
        apply_tensor_parallel(model, tp_mesh, plan, fsdp_degree)
    except ValueError as exc:
        raise ConfigError(str(exc), key="tensor_parallel_dim") from None
