"""Expert parallelism: each rank of a process group holds ``E / ep`` of every MoE layer's experts.

``apply_expert_parallel(model, group)`` keeps rank ``r``'s experts ``[r * E_l, (r + 1) * E_l)``
(``E_l = E / ep``; every parameter of ``moe.experts`` with a leading ``E`` dim, LoRA adapters
included, is sliced) and sets ``moe.expert_group``. ``MoE.forward`` then calls
:func:`dispatch` instead of its experts: the routed rows (already sorted by expert) go to the
rank owning their expert with one ``all_to_all_single`` (the per-expert counts first, with
another), run through the local experts, and come back the same way. Autograd: the backward of
an all-to-all is the all-to-all with the splits swapped, so a rank's expert gradients sum the
contributions of every rank's tokens (exactly the one-process gradient of those experts, when
each rank's loss is its share of the global loss). Works on any backend with
``all_to_all_single`` (gloo on CPU, NCCL on GPU); no token is dropped.

The optimizer state of the slices is all-gathered into the full ``[E, ...]`` tensors when
saved (:func:`gather_expert_optimizer_state`) and cut back to each rank's experts when loaded
(:func:`slice_expert_optimizer_state`), so a run resumes on any expert-parallel degree (or one
process) from the same checkpoint format.

Sharded (DCP) saves: :func:`expert_slices_to_dtensors` wraps each slice (and its per-expert
optimizer state) in a ``DTensor`` sharded on dim 0 over a mesh of the expert group, sharing
storage, so DCP writes every rank's experts as one ``[E, ...]`` tensor and loads reshard it
(in place, at any degree); :func:`expert_slices_to_local` unwraps them again before the
state dicts are set.

Routers run on each rank's own tokens, so the load-balancing loss is pooled per rank (not
across the expert-parallel group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tunesmith.modules.moe import GroupedExperts, moe_layers
from tunesmith.training.distributed import all_to_all

__all__ = [
    "apply_expert_parallel",
    "average_expert_grads",
    "dispatch",
    "expert_slices_to_dtensors",
    "expert_slices_to_local",
    "expert_slices",
    "gather_expert_optimizer_state",
    "gather_expert_slices",
    "slice_expert_optimizer_state",
    "slice_expert_weights",
]


def dispatch(experts: GroupedExperts, x: Tensor, counts: Tensor, group) -> Tensor:
    """``x [N, d]`` rows sorted by (global) expert, ``counts [E]`` -> expert outputs ``[N, d]``
    computed by the ranks of ``group`` that own the experts."""
    ep = dist.get_world_size(group)
    local = experts.num_experts
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts.contiguous(), group=group)  # [ep * E_l]
    recv_counts = recv_counts.view(ep, local)  # rows from rank j for each local expert
    send = counts.view(ep, local).sum(dim=1).tolist()
    recv = recv_counts.sum(dim=1).tolist()
    rows = all_to_all(x, recv, send, group)
    expert_of_row = torch.repeat_interleave(
        torch.arange(local, device=x.device).repeat(ep), recv_counts.reshape(-1)
    )
    order = torch.argsort(expert_of_row, stable=True)
    out = experts(rows[order], recv_counts.sum(dim=0))
    back = torch.empty_like(out).index_copy(0, order, out)  # undo the regrouping
    return all_to_all(back, send, recv, group)


@torch.no_grad()
def apply_expert_parallel(model: nn.Module, group) -> nn.Module:
    """Keep this rank's slice of every MoE layer's experts and route through ``group``.

    Raises:
        ValueError: (one line) when a layer's expert count is not divisible by the group size.
    """
    ep, rank = dist.get_world_size(group), dist.get_rank(group)
    for moe in moe_layers(model):
        experts = moe.experts
        n = experts.num_experts
        if n % ep:
            raise ValueError(
                f"expert_parallel_dim={ep} does not divide num_experts={n}: pick a divisor of {n}"
            )
        local = n // ep
        sliced = []
        for prefix, module in experts.named_modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.dim() and param.shape[0] == n:
                    part = param[rank * local : (rank + 1) * local].clone()
                    setattr(module, name, nn.Parameter(part, requires_grad=param.requires_grad))
                    sliced.append(f"{prefix}.{name}" if prefix else name)
        experts.num_experts = local
        experts.expert_parallel = (rank, ep, tuple(sliced))  # type: ignore[assignment]
        moe.expert_group = group
    return model


def _sliced(model: nn.Module):
    for name, module in model.named_modules():
        info = getattr(module, "expert_parallel", None)
        if isinstance(module, GroupedExperts) and info is not None:
            yield name, module, info


def expert_slices(model: nn.Module) -> dict[str, nn.Parameter]:
    """The expert-parallel slices of ``model`` by fully qualified name (empty without EP)."""
    out = {}
    for name, module, (_, _, names) in _sliced(model):
        for local in names:
            out[f"{name}.{local}"] = module.get_parameter(local)
    return out


def slice_expert_weights(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Cut this rank's experts out of full checkpoint tensors (``weights``, in place)."""
    for name, _module, (rank, ep, names) in _sliced(model):
        for local in names:
            key = f"{name}.{local}"
            if key in weights:
                size = weights[key].shape[0] // ep
                weights[key] = weights[key][rank * size : (rank + 1) * size]


def gather_expert_slices(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Replace each rank's expert slices in ``state_dict`` by the full ``[E, ...]`` tensors
    (all-gathered in expert order, on CPU). Every rank must call it; no-op without EP."""
    for name, module, (_, ep, names) in _sliced(model):
        group = getattr(model.get_submodule(name.rsplit(".", 1)[0]), "expert_group", None)
        for local in names:
            key = f"{name}.{local}".replace("_checkpoint_wrapped_module.", "")
            part = module.get_parameter(local).detach()
            parts = [torch.empty_like(part) for _ in range(ep)]
            dist.all_gather(parts, part.contiguous(), group=group)
            state_dict[key] = torch.cat(parts).cpu()


def _slice_fqns(model: nn.Module) -> dict[str, tuple[int, int, object]]:
    """Clean fully qualified name of each expert slice -> (rank, ep, group)."""
    out = {}
    for name, _module, (rank, ep, names) in _sliced(model):
        group = getattr(model.get_submodule(name.rsplit(".", 1)[0]), "expert_group", None)
        for local in names:
            key = f"{name}.{local}".replace("_checkpoint_wrapped_module.", "")
            out[key] = (rank, ep, group)
    return out


def _per_expert(value: object, local: int | None) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == local


def gather_expert_optimizer_state(model: nn.Module, optimizer, optim_sd: dict) -> None:
    """Put the full ``[E, ...]`` per-expert optimizer state (``exp_avg``, ...) of every expert
    slice into ``optim_sd`` (a ``get_optimizer_state_dict(full_state_dict=True)`` result,
    which holds only rank 0's slice, and only on rank 0): each rank's state is read from
    ``optimizer.state`` and all-gathered in expert order. Every rank must call it (in the
    same order everywhere); no-op without EP."""
    slices = expert_slices(model)
    state = optim_sd.get("state")
    for key, (_, ep, group) in _slice_fqns(model).items():
        param = slices[_wrapped_name(model, key)]
        own = optimizer.state.get(param, {})
        for name in sorted(own):
            value = own[name]
            if not _per_expert(value, param.shape[0]):
                continue
            parts = [torch.empty_like(value) for _ in range(ep)]
            dist.all_gather(parts, value.contiguous(), group=group)
            if state is not None and key in state:
                state[key][name] = torch.cat(parts).cpu()


def slice_expert_optimizer_state(model: nn.Module, optim_sd: dict) -> dict:
    """The inverse of :func:`gather_expert_optimizer_state` on a full optimizer state dict:
    a copy whose expert-slice entries hold this rank's experts only."""
    state = optim_sd.get("state")
    slices = _slice_fqns(model)
    if not state or not slices:
        return optim_sd
    state = dict(state)
    for key, (rank, ep, _) in slices.items():
        if key not in state:
            continue
        local = model.get_parameter(_wrapped_name(model, key)).shape[0]
        entry = dict(state[key])
        for name, value in entry.items():
            if _per_expert(value, local * ep):
                entry[name] = value[rank * local : (rank + 1) * local].clone()
        state[key] = entry
    return {**optim_sd, "state": state}


def _wrapped_name(model: nn.Module, clean: str) -> str:
    """``clean`` (no ``_checkpoint_wrapped_module.``) as the model's own parameter name."""
    for name, _ in model.named_parameters():
        if name.replace("_checkpoint_wrapped_module.", "") == clean:
            return name
    return clean


def average_expert_grads(model: nn.Module) -> None:
    """Divide the expert slices' gradients by the group size: FSDP2 averages the other
    gradients over the ranks, while an expert's gradient arrives summed over every rank's
    tokens (call after the parameters are final, i.e. after loading)."""
    for _, module, (_, ep, names) in _sliced(model):
        for local in names:
            param = module.get_parameter(local)
            if param.requires_grad:
                param.register_hook(lambda grad, ep=ep: grad / ep)


_MESHES: dict[int, object] = {}


def _group_mesh(group, device: torch.device):
    """A 1-D ``DeviceMesh`` over the ranks of ``group`` (cached per group and device type)."""
    from torch.distributed.device_mesh import DeviceMesh

    group = group if group is not None else dist.group.WORLD
    key = hash((id(group), device.type))
    if key not in _MESHES:
        _MESHES[key] = DeviceMesh.from_group(group, device.type)
    return _MESHES[key]


def expert_slices_to_dtensors(model: nn.Module, state: dict) -> None:
    """In ``state`` (``{"model": get_model_state_dict, "optimizer": get_optimizer_state_dict}``
    of this rank), replace each expert slice ``[E_l, ...]`` and its per-expert optimizer
    tensors by ``DTensor`` views ``Shard(0)`` over the expert group (global ``[E, ...]``),
    so DCP saves / loads all experts. No-op without EP."""
    from torch.distributed.tensor import DTensor, Shard

    slices = _slice_fqns(model)
    if not slices:
        return
    # fresh containers: the optimizer state dict's entries may be ``optimizer.state``'s own
    optim = dict((state.get("optimizer") or {}).get("state") or {})
    if "optimizer" in state:
        state["optimizer"] = {**state["optimizer"], "state": optim}
    for key, (_, _, group) in slices.items():
        local = model.get_parameter(_wrapped_name(model, key)).shape[0]
        targets = [(state.get("model") or {}, key)] if key in (state.get("model") or {}) else []
        if key in optim:  # (a frozen slice has no optimizer state)
            entry = optim[key] = dict(optim[key])
            targets += [(entry, name) for name, v in entry.items() if _per_expert(v, local)]
        for holder, name in targets:
            value = holder[name]
            mesh = _group_mesh(group, value.device)
            wrapped = DTensor.from_local(value, mesh, [Shard(0)], run_check=False)
            wrapped._ts_expert_slice = True  # type: ignore[attr-defined]
            holder[name] = wrapped


def expert_slices_to_local(state: dict) -> None:
    """Undo :func:`expert_slices_to_dtensors` after ``dcp.load`` (the loaded values are in the
    local tensors already): every plain-slice ``DTensor`` goes back to its local tensor."""
    from torch.distributed.tensor import DTensor

    def unwrap(holder: dict) -> None:
        for name, value in holder.items():
            if isinstance(value, DTensor) and getattr(value, "_ts_expert_slice", False):
                holder[name] = value.to_local()

    unwrap(state.get("model") or {})
    for entry in ((state.get("optimizer") or {}).get("state") or {}).values():
        unwrap(entry)
