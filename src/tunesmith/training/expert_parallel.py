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

Routers run on each rank's own tokens, so the load-balancing loss is pooled per rank (not
across the expert-parallel group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tunesmith.modules.moe import GroupedExperts, moe_layers

__all__ = ["apply_expert_parallel", "dispatch"]


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with autograd: rows ``x [sum(in_splits), ...]`` ->
    ``[sum(out_splits), ...]``."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:  # type: ignore[override]
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


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
    rows = _AllToAll.apply(x, recv, send, group)
    expert_of_row = torch.repeat_interleave(
        torch.arange(local, device=x.device).repeat(ep), recv_counts.reshape(-1)
    )
    order = torch.argsort(expert_of_row, stable=True)
    out = experts(rows[order], recv_counts.sum(dim=0))
    back = torch.empty_like(out).index_copy(0, order, out)  # undo the regrouping
    return _AllToAll.apply(back, send, recv, group)


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
        for module in experts.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.dim() and param.shape[0] == n:
                    part = param[rank * local : (rank + 1) * local].clone()
                    setattr(module, name, nn.Parameter(part, requires_grad=param.requires_grad))
        experts.num_experts = local
        moe.expert_group = group
    return model
