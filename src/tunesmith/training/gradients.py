"""Gradient accumulation with token-weighted loss, gradient scaling and clipping.

The pattern every recipe follows (one optimizer step over ``gradient_accumulation_steps``
micro-batches, on one process or many)::

    loss_sum = torch.zeros((), device=device)       # sum of per-token losses, detached
    num_tokens = torch.zeros((), device=device, dtype=torch.long)
    for micro_batch in micro_batches:                 # gradient_accumulation_steps of them
        labels = shift_labels(micro_batch["labels"])  # [b, s]
        n = count_trainable_tokens(labels)            # non-ignored tokens in this micro-batch
        loss = loss_fn(model(micro_batch["tokens"]), labels)  # mean over its n tokens
        (loss * n).backward()                          # backprop the SUM of per-token losses
        loss_sum += loss.detach() * n
        num_tokens += n
    loss_sum, num_tokens = reduce_metrics(loss_sum, num_tokens)  # all-reduce sums; no-op on 1 process
    scale_grads(model, get_world_size_and_rank()[0] / num_tokens)  # once, before the step
    grad_norm = clip_grad_norm(model.parameters(), clip_grad_norm_value)  # optional
    optimizer.step(); optimizer.zero_grad(set_to_none=True); lr_scheduler.step()
    logged_loss = (loss_sum / num_tokens).item()

The gradient is then d(sum of every per-token loss in the whole accumulated, global batch) /
(total non-ignored tokens), i.e. exactly what one big batch would give: micro-batches with
more unmasked tokens weigh more, as they should. Averaging per-micro-batch means instead (the
naive ``loss / gradient_accumulation_steps``) weighs a short micro-batch's tokens more. The
``world_size`` factor undoes FSDP's average over ranks (FSDP2 reduce-scatter divides by the
number of ranks; on one process it is 1).

With ``optimizer_in_bwd`` (``OptimizerInBackward``) gradients are consumed inside backward, so
nothing can be rescaled afterwards: use one micro-batch per step and normalise the loss before
backward by the *global* token count::

    n = count_trainable_tokens(labels)
    (global_n,) = reduce_metrics(n.clone())
    (loss * n * world_size / global_n).backward()   # parameters are updated in here

Under FSDP2, ``model.set_requires_gradient_sync(is_last_micro_batch)`` may skip the
reduce-scatter of all but the last micro-batch; the arithmetic above is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["clip_and_step", "clip_grad_norm", "count_trainable_tokens", "scale_grads"]


def count_trainable_tokens(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Number of positions in ``labels`` ([b, s] long) that the loss trains on, as a 0-d long
    tensor on ``labels``' device (no host sync)."""
    return (labels != ignore_index).sum()


def _params(model_or_params: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(model_or_params, nn.Module):
        return list(model_or_params.parameters())
    return list(model_or_params)


def scale_grads(
    model_or_params: nn.Module | Iterable[torch.Tensor], scaler: torch.Tensor | float
) -> None:
    """Multiply every existing ``.grad`` in place by ``scaler`` (a float or 0-d tensor).

    Works for plain tensors and FSDP2 ``DTensor`` gradients (the scale is applied to each local
    shard, which is the same as scaling the full gradient).
    """
    if isinstance(scaler, torch.Tensor):
        scaler = float(scaler.item())
    for param in _params(model_or_params):
        if param.grad is not None:
            param.grad.mul_(scaler)


def clip_grad_norm(
    parameters: nn.Module | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` and return the norm before clipping as a
    plain 0-d tensor (also under FSDP2, where torch returns a ``DTensor``: it is made full here
    so it can be logged)."""
    if max_norm is None or max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be a positive number, got {max_norm}")
    if isinstance(parameters, nn.Module):
        from tunesmith.training.expert_parallel import expert_slices

        if expert_slices(parameters):
            return _clip_with_expert_slices(parameters, float(max_norm), norm_type)
    params = [p for p in _params(parameters) if p.grad is not None]
    total = torch.nn.utils.clip_grad_norm_(params, max_norm=float(max_norm), norm_type=norm_type)
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    return total


def _clip_with_expert_slices(model: nn.Module, max_norm: float, norm_type: float) -> torch.Tensor:
    """Global-norm clipping under expert parallelism: the FSDP2 (``DTensor``) gradients' norm
    is global already; each rank's expert slices are disjoint, so their norm is the sum over
    the expert group of the local ``norm ** p``. Every gradient is then scaled by
    ``min(1, max_norm / (total + 1e-6))``, as ``clip_grad_norm_`` does."""
    import torch.distributed as dist

    from tunesmith.training.expert_parallel import expert_slices

    slices = {id(p) for p in expert_slices(model).values()}
    experts = [p.grad for p in model.parameters() if id(p) in slices and p.grad is not None]
    others = [p.grad for p in model.parameters() if id(p) not in slices and p.grad is not None]
    if norm_type == float("inf"):
        raise ValueError("clip_grad_norm with expert parallelism supports p-norms, not inf")
    p = float(norm_type)
    device = (experts or others)[0].device
    rest = torch.nn.utils.get_total_norm(others, norm_type=p) if others else torch.zeros(())
    if hasattr(rest, "full_tensor"):
        rest = rest.full_tensor()
    local = sum((g.detach().float().norm(p) ** p for g in experts), torch.zeros((), device=device))
    group = next(m.expert_group for m in _moe_with_group(model))
    dist.all_reduce(local, group=group)
    total = (rest.float().to(device) ** p + local) ** (1.0 / p)
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    if coef < 1.0:
        for g in [*others, *experts]:
            g.mul_(coef)
    return total


def _moe_with_group(model: nn.Module):
    from tunesmith.modules.moe import moe_layers

    return (m for m in moe_layers(model) if getattr(m, "expert_group", None) is not None)


def clip_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    max_norm: float | None,
    scaler: Any = None,
) -> torch.Tensor | None:
    """The end of an optimizer step: unscale (fp16 loss scaling, a ``DynamicLossScaler``),
    clip to ``max_norm`` (the true, unscaled gradient), step (skipped by the scaler on an
    overflow). Returns the total gradient norm when clipping, else None. Does not zero grads.
    """
    if scaler is not None:
        scaler.unscale_(model.parameters())
    grad_norm = clip_grad_norm(model, float(max_norm)) if max_norm else None
    if scaler is not None:
        scaler.step(optimizer)
    else:
        optimizer.step()
    return grad_norm
