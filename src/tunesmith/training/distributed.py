"""Distributed plumbing for FSDP2 under ``torchrun`` (NCCL on GPUs, gloo on CPU).

The recipe's order::

    init_distributed()                       # no-op unless launched by torchrun with WORLD_SIZE>1
    world_size, rank = get_world_size_and_rank()
    model = build_model()                    # on "meta" or CPU
    apply_activation_checkpointing(model)    # optional, before sharding
    if world_size > 1:
        shard_model(model, reshard_after_forward=True)   # each layer, then the root
        load_from_full_model_state_dict(model, full_sd, device)
    else:
        model.load_state_dict(full_sd)
    compile_model(model)                     # optional, after sharding
    ... train (see tunesmith.training.gradients for the accumulation pattern) ...
    full_sd = gather_cpu_state_dict(model, is_rank_zero=rank == 0)   # every rank calls it
    if rank == 0: checkpointer.save_checkpoint({"model": full_sd}, ...)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tunesmith.modules.peft import is_adapter_key
from tunesmith.modules.peft._nf4 import dequantize, dequantized_state_dict_on

__all__ = [
    "all_to_all",
    "barrier",
    "destroy_distributed",
    "gather_cpu_state_dict",
    "get_distributed_backend",
    "get_full_optimizer_state_dict",
    "get_world_size_and_rank",
    "init_distributed",
    "is_distributed",
    "load_from_full_model_state_dict",
    "load_from_full_optimizer_state_dict",
    "reduce_metrics",
    "shard_model",
]


def is_distributed() -> bool:
    """True when a process group with more than one rank is (or is about to be) in use: either
    one is initialised, or torchrun's ``WORLD_SIZE`` is > 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def get_world_size_and_rank() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def get_distributed_backend(device_type: str) -> str:
    """``nccl`` for CUDA (with gloo for CPU-side collectives), ``xccl`` for XPU, else ``gloo``."""
    if device_type == "cuda":
        return "cuda:nccl,cpu:gloo"
    if device_type == "xpu":
        return "xpu:xccl,cpu:gloo"
    return "gloo"


def init_distributed(
    backend: str | None = None, device_type: str | None = None, timeout_s: float = 1800
) -> bool:
    """Initialise the default process group from torchrun's environment when ``WORLD_SIZE`` > 1.

    Sets the CUDA/XPU device to ``LOCAL_RANK``. Returns True if a process group is now active.
    Calling it twice, or in a single process, is harmless.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE>1 but {missing} are not set: launch with "
            "`tunesmith run --nproc_per_node N <recipe> ...` (or torchrun)."
        )
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    elif device_type == "xpu":
        torch.xpu.set_device(local_rank)
    dist.init_process_group(
        backend=backend or get_distributed_backend(device_type),
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return True


def agreed_seed(seed: int | None, world_size: int, device: torch.device) -> int:
    """Seed every RNG; all ranks take rank 0's seed (the same shuffle and LoRA init)."""
    from tunesmith.utils._seed import set_seed

    seed = set_seed(seed)
    if world_size > 1:
        t = torch.tensor(seed, dtype=torch.long, device=device)
        dist.broadcast(t, src=0)
        seed = set_seed(int(t))
    return seed


def any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """``True`` on every rank when ``flag`` is true on any (one ``MAX`` all-reduce), e.g. a
    stop request one rank's signal handler saw."""
    if world_size == 1:
        return flag
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy_distributed() -> None:
    """Synchronise, then tear the process group down (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


ShardCondition = Callable[[str, nn.Module], bool]


def shard_model(
    model: nn.Module,
    shard_conditions: list[ShardCondition] | None = None,
    *,
    cpu_offload: bool = False,
    reshard_after_forward: bool = True,
    dp_mesh: Any = None,
    mp_policy: Any = None,
    ignored_params: set[nn.Parameter] | None = None,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``): every module
    that matches one of ``shard_conditions`` (default: each child of ``model.layers``) gets its own
    FSDP unit, then the root takes the rest (embeddings, final norm, output).

    Args:
        shard_conditions: callables ``(fqn, module) -> bool``.
        cpu_offload: keep sharded parameters (and so optimizer state) in CPU memory.
        reshard_after_forward: free gathered parameters after each layer's forward (less
            memory, one more all-gather in backward). The root never reshards.
        dp_mesh: a ``DeviceMesh`` (default: all ranks, 1-D).
        mp_policy: an FSDP2 ``MixedPrecisionPolicy``.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    kwargs: dict[str, Any] = {"reshard_after_forward": reshard_after_forward}
    if dp_mesh is not None:
        kwargs["mesh"] = dp_mesh
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    if ignored_params:  # e.g. expert-parallel slices: already split over the ranks
        kwargs["ignored_params"] = ignored_params

    if shard_conditions is None:
        layers = getattr(model, "layers", None)
        if layers is None:
            raise ValueError(
                "shard_model: the model has no `layers` container; pass shard_conditions="
                "[lambda name, module: isinstance(module, MyLayer)]"
            )
        layer_ids = {id(m) for m in layers.children()}
        shard_conditions = [lambda _name, module: id(module) in layer_ids]

    units = [
        module
        for name, module in model.named_modules()
        if module is not model and any(cond(name, module) for cond in shard_conditions)
    ]
    if not units:
        raise ValueError("shard_model: no module matched the shard conditions")
    names = {id(m): n for n, m in model.named_modules()}
    # Tied embeddings: the output projection (TiedLinear, also called by the loss outside the
    # model's forward) reads the embedding's weight after the embedding's own forward, so an
    # embedding unit keeps its parameters gathered until backward, as the root does.
    keep_gathered = {id(model)} | _tied_embedding_ids(model)
    for module in [*reversed(units), model]:  # inner-most first, as FSDP2 expects; root last
        unit_kwargs = kwargs
        if id(module) in keep_gathered:
            unit_kwargs = {**kwargs, "reshard_after_forward": False}
        try:
            fully_shard(module, **unit_kwargs)
        except AssertionError as exc:
            if "divisible" not in str(exc):
                raise
            raise ValueError(
                f"FSDP2 cannot shard {names[id(module)] or 'the root module'!r}: its NF4 (QLoRA) "
                f"weights split into quantization blocks that do not divide evenly across "
                f"{_world_size()} ranks ({exc}). Use fewer ranks, a larger model, or plain LoRA."
            ) from exc
    return model


def _tied_embedding_ids(model: nn.Module) -> set[int]:
    """ids of the modules whose weight a ``TiedLinear`` in ``model`` projects with."""
    from tunesmith.modules.tied_linear import TiedLinear

    return {
        id(value.tied_module)
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, TiedLinear)
    }


def _world_size() -> int:
    return get_world_size_and_rank()[0]


def load_from_full_model_state_dict(
    model: nn.Module,
    full_sd: dict[str, torch.Tensor],
    device: torch.device | str | None = None,
    strict: bool = False,
    cpu_offload: bool = False,
    broadcast_from_rank0: bool = False,
) -> Any:
    """Load an unsharded state dict (as a checkpointer returns it) into an FSDP2-sharded model:
    each rank keeps only its shard. Without ``broadcast_from_rank0`` every rank passes the full
    dict and cuts its shards locally (:func:`tunesmith.training.meta_init.load_full_state_dict`:
    NF4 too, no collective). With ``broadcast_from_rank0`` only rank 0 needs ``full_sd``
    (others may pass ``{}``; DCP's ``set_model_state_dict``). Works on a model whose sharded parameters are still on ``meta``
    (they are materialised on ``device`` first, and modules with a ``rope_init()`` method, such as
    torchtune-style RoPE caches, re-run it). Returns ``(missing_keys, unexpected_keys)``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not broadcast_from_rank0:  # every rank has the full dict: cut shards locally
        from tunesmith.training.meta_init import load_full_state_dict

        target = torch.device("cpu") if cpu_offload or device is None else torch.device(device)
        return load_full_state_dict(model, full_sd, target, strict=strict)
    if any(p.is_meta for p in model.parameters()):
        target = torch.device("cpu") if cpu_offload or device is None else torch.device(device)
        model.to_empty(device=target)
        for module in model.modules():  # torchtune convention: recompute derived buffers
            rope_init = getattr(module, "rope_init", None)
            if callable(rope_init):
                rope_init()
    options = StateDictOptions(
        full_state_dict=True,
        strict=strict,
        cpu_offload=cpu_offload,
        broadcast_from_rank0=broadcast_from_rank0,
    )
    return set_model_state_dict(model, full_sd, options=options)


def gather_cpu_state_dict(
    model: nn.Module,
    is_rank_zero: bool,
    device: torch.device | str | None = None,
    adapter_weights_only: bool = False,
) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict, on CPU, on rank 0; ``{}`` on other ranks. Every rank must
    call it (it all-gathers). On an unsharded model it is simply ``model.state_dict()`` on CPU.

    NF4 (QLoRA) base weights come out dequantized, as plain tensors in their original dtype,
    one at a time: each is moved to CPU as soon as it is dequantized (unsharded) or gathered to
    CPU still quantized and dequantized there (FSDP2), so the accelerator never holds more than
    one dequantized weight.

    ``adapter_weights_only`` keeps only LoRA/DoRA tensors (``lora_a``, ``lora_b``, ``magnitude``).
    ``device`` is accepted for torchtune compatibility and unused (the result is always on CPU).
    """
    del device
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        with dequantized_state_dict_on("cpu", keep=is_rank_zero):  # tensor-parallel NF4
            sd = get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        from tunesmith.training.expert_parallel import gather_expert_slices

        gather_expert_slices(model, sd)  # every rank: it all-gathers
        sd = sd if is_rank_zero else {}
        for key, value in sd.items():  # FSDP2's gathered NF4 weights are still NF4 (the hook
            sd[key] = dequantize(value, device="cpu")  # ran on a DTensor it cannot see into)
    elif is_rank_zero:
        sd = state_dict_on(model, torch.device("cpu"))
    else:
        sd = {}
    if adapter_weights_only:
        sd = {k: v for k, v in sd.items() if is_adapter_key(k)}
    return sd


def state_dict_on(model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` (unsharded) with every tensor detached on ``device``; NF4 weights
    are dequantized and moved one by one (see :func:`gather_cpu_state_dict`)."""
    with dequantized_state_dict_on(device):
        sd = model.state_dict()
    return {k: v.detach().to(device) for k, v in sd.items()}


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with autograd; the backward is the all-to-all with the splits
    swapped (each rank gets back the gradients of the rows it sent)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group
    ) -> torch.Tensor:  # type: ignore[override]
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def all_to_all(
    x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any
) -> torch.Tensor:
    """Rows ``x [sum(in_splits), ...]`` (``in_splits[j]`` of them sent to rank ``j`` of
    ``group``, in rank order) -> ``[sum(out_splits), ...]`` (``out_splits[j]`` received from
    rank ``j``), differentiable. Any backend with ``all_to_all_single`` (gloo, NCCL)."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


def reduce_metrics(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All-reduce (sum) each tensor across ranks, e.g. ``reduce_metrics(loss_sum, num_tokens)``;
    returns them (the same tensors, reduced in place). A no-op on one process.

    Reduce *sums* (loss x tokens, tokens), then divide: the mean of per-rank means would weigh a
    rank's tokens by how few it had.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tensors


def get_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, is_rank_zero: bool
) -> dict[str, Any]:
    """The optimizer state with full (unsharded) CPU tensors keyed by parameter name, on rank 0;
    ``{}`` elsewhere. Every rank must call it (it all-gathers under FSDP2).

    The same format comes out of 1 or N processes, so a checkpoint resumes on any world size.
    Plain optimizers go through ``torch.distributed.checkpoint.state_dict``
    (``{"state": {fqn: ...}, "param_groups": [...]}``); an ``OptimizerInBackward`` gives
    ``{"optimizers": {param_name: per-parameter state dict}}`` with full tensors.
    """
    from tunesmith.training.optimizers import OptimizerInBackward

    if isinstance(optimizer, OptimizerInBackward):
        out: dict[str, Any] = {}
        for name, opt in optimizer.optimizers.items():  # same order on every rank
            sd = opt.state_dict()
            sd["state"] = {
                idx: {k: _full_cpu(v) for k, v in state.items()}
                for idx, state in sd["state"].items()
            }
            out[name] = sd
        return {"optimizers": out} if is_rank_zero else {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_optimizer_state_dict(model, optimizer, options=options)
    from tunesmith.training.expert_parallel import gather_expert_optimizer_state

    gather_expert_optimizer_state(model, optimizer, sd)  # every rank: it all-gathers
    return sd if is_rank_zero else {}


def load_from_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, full_sd: dict[str, Any]
) -> None:
    """Load what ``get_full_optimizer_state_dict`` returned into ``optimizer`` (sharded or not);
    every rank passes the full dict and keeps its own shard."""
    from tunesmith.training.optimizers import OptimizerInBackward

    if isinstance(optimizer, OptimizerInBackward):
        saved = full_sd.get("optimizers")
        if saved is None:
            raise ValueError(
                "optimizer state: expected an optimizer_in_bwd checkpoint (key 'optimizers'); "
                "resume with the optimizer_in_bwd setting the checkpoint was made with"
            )
        params = dict(model.named_parameters())
        local = {}
        for name, sd in saved.items():
            param = params.get(name)
            sd = dict(sd)
            sd["state"] = {
                idx: {k: _shard_like(v, param) for k, v in state.items()}
                for idx, state in sd["state"].items()
            }
            local[name] = sd
        optimizer.load_state_dict({"optimizers": local})
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if "state" in full_sd and any(isinstance(k, int) for k in full_sd["state"]):
        raise ValueError(
            "optimizer state: keyed by position (torch's optimizer.state_dict()), not by parameter "
            "name; save it with get_full_optimizer_state_dict"
        )
    from tunesmith.training.expert_parallel import slice_expert_optimizer_state

    full_sd = slice_expert_optimizer_state(model, full_sd)  # this rank's experts' state
    set_optimizer_state_dict(
        model, optimizer, full_sd, options=StateDictOptions(full_state_dict=True)
    )


def _full_cpu(value: Any) -> Any:
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def _shard_like(value: Any, param: torch.Tensor | None) -> Any:
    """Full optimizer-state tensor -> this rank's shard, laid out like ``param`` (a DTensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or not isinstance(value, torch.Tensor):
        return value
    if tuple(value.shape) != tuple(param.shape):
        return value  # scalars such as "step"
    return distribute_tensor(value.to(param.to_local().device), param.device_mesh, param.placements)
