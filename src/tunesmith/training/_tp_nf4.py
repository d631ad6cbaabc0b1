"""QLoRA under tensor parallelism: a LoRA layer whose frozen base weight is NF4.

DTensor cannot run a matmul on a torchao ``NF4Tensor`` shard, and NF4 cannot be split by
columns as a flat tensor, so such a layer is split by hand with the same layouts as
:class:`~tunesmith.training.tensor_parallel.LoRAColwiseParallel` /
``LoRARowwiseParallel`` (Megatron's column / row parallel linear):

=========  ==========================  ===========================  =====================
role       base ``weight [out, in]``   ``lora_a [r, in]``           ``lora_b [out, r]``
=========  ==========================  ===========================  =====================
colwise    rows split (``Shard(0)``)   replicated                   rows split
rowwise    columns split (``Shard(1)``) columns split               replicated
=========  ==========================  ===========================  =====================

Each rank keeps its piece of the *whole* weight's quantization
(:func:`~tunesmith.modules.peft._nf4.nf4_shard`: bit-identical dequantized values, because
a piece is whole NF4 blocks of 64; a degree that breaks that is refused before weights load,
:func:`nf4_misfit`). Parameters stay DTensors (the NF4 one with an NF4 local tensor), so
loading, gathering for saves, the optimizer and gradient clipping see the usual layouts; the
layer's forward works on the local tensors and makes the collectives itself:

* colwise, input replicated ``x [..., in]`` -> local output ``[..., out / tp]``: the gradients
  of ``x`` and of the replicated ``lora_a`` are per-rank partial sums, all-reduced in backward;
* rowwise, input split ``x [..., in / tp]`` -> the style's output layout: base and adapter
  partial outputs wrapped as one ``Partial`` DTensor and redistributed by DTensor (all-reduce
  to a replicated ``[..., out]``, or, under sequence parallelism, reduce-scatter to this
  rank's ``Shard(1)`` slice of the sequence); the gradient of the replicated ``lora_b`` (a
  per-rank partial sum) all-reduced in backward; the bias added once, after.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

from tunesmith.modules.peft._nf4 import is_nf4, nf4_linear, nf4_shard, nf4_shard_misfit

__all__ = ["nf4_misfit", "nf4_tensor_parallel"]


class _SumGradients(torch.autograd.Function):
    """Identity forward; backward all-reduces (sums) the gradient over ``group``: where a
    replicated tensor enters per-rank partial computations."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _local(param: torch.Tensor | None) -> torch.Tensor | None:
    """The local piece of a DTensor parameter, differentiable (its gradient becomes a DTensor
    with the parameter's placements)."""
    return param.to_local() if isinstance(param, DTensor) else param


def _colwise_forward(module: nn.Module, x: torch.Tensor, group: Any) -> torch.Tensor:
    """``x [..., in]`` (the same on every rank) -> this rank's ``[..., out / tp]``."""
    x = _SumGradients.apply(x, group)
    out = nf4_linear(x, module.weight._local_tensor)  # frozen: no gradient to the weight
    bias = _local(module.bias)
    if bias is not None:
        out = out + bias
    if module.disabled:
        return out
    lora_a = _SumGradients.apply(_local(module.lora_a.weight), group)
    low_rank = F.linear(module.dropout(x), lora_a)  # [..., rank], the same on every rank
    return out + module.scaling * F.linear(low_rank, _local(module.lora_b.weight))


def _rowwise_forward(
    module: nn.Module, x: torch.Tensor, group: Any, mesh: Any, layouts: tuple, local: bool
) -> torch.Tensor:
    """``x [..., in / tp]`` (this rank's columns) -> ``[..., out]`` in the output ``layouts``
    (``(Replicate(),)``: the same on every rank; ``(Shard(1),)``: this rank's part of the
    sequence, ``[b, s / tp, out]``), a plain tensor when ``local`` else a DTensor."""
    out = nf4_linear(x, module.weight._local_tensor)
    if not module.disabled:
        low_rank = F.linear(module.dropout(x), _local(module.lora_a.weight))  # partial [.., r]
        lora_b = _SumGradients.apply(_local(module.lora_b.weight), group)
        out = out + module.scaling * F.linear(low_rank, lora_b)
    # one reduction of the partial sums (its backward hands the replicated gradient back)
    out = DTensor.from_local(out, mesh, [Partial()], run_check=False)
    out = out.redistribute(placements=layouts)
    if module.bias is not None:
        out = out + module.bias
    return out.to_local() if local else out


def nf4_misfit(module: nn.Module, rowwise: bool, tp: int) -> str | None:
    """Why ``tp``-way tensor parallelism cannot cut ``module``'s NF4 weight into whole NF4
    blocks in the given role (``None``: it can, or the weight is not NF4)."""
    weight = getattr(module, "weight", None)
    if tp <= 1 or not is_nf4(weight):
        return None
    why = nf4_shard_misfit(tuple(weight.shape), int(rowwise), tp, weight.block_size)
    if why is None:
        return None
    return f"{list(weight.shape)} by {('rows', 'columns')[int(rowwise)]} ({why})"


def _check_layouts(style: Any, rowwise: bool) -> None:
    """Colwise: torch's default layouts only; rowwise: the default, or sequence parallelism's
    reduce-scatter (output ``Shard(1)``, a DTensor)."""
    want_in, want_out = (Shard(-1), Replicate()) if rowwise else (Replicate(), Shard(-1))
    got = (tuple(style.input_layouts), tuple(style.output_layouts), style.use_local_output)
    allowed = [((want_in,), (want_out,), True)]
    if rowwise:
        allowed.append(((want_in,), (Shard(1),), False))
    if got not in allowed:
        role = "RowwiseParallel" if rowwise else "ColwiseParallel"
        also = ", or output Shard(1) as a DTensor (sequence parallelism)" if rowwise else ""
        raise ValueError(
            f"tensor_parallel_plan: an NF4 (QLoRA) layer takes {role}'s default layouts only "
            f"(input {want_in}, output {want_out}, local output{also}), not input "
            f"{got[0]}, output {got[1]}: use {role}() for it"
        )


def _place(module: nn.Module, name: str, mesh: Any, placement: Any) -> None:
    param = getattr(module, name, None)
    if param is None or isinstance(param, DTensor):
        return
    value = distribute_tensor(param, mesh, [placement], src_data_rank=None)
    module.register_parameter(name, nn.Parameter(value, requires_grad=param.requires_grad))


def nf4_tensor_parallel(
    module: nn.Module, mesh: Any, style: Any, rowwise: bool, fsdp_degree: int = 1
) -> nn.Module:
    """Split the NF4 LoRA layer ``module`` over the 1-D ``mesh`` in place (colwise, or rowwise
    when ``rowwise``), as the table above lays out; ``style`` is the plan's Colwise/Rowwise
    style, whose layouts must be the defaults; ``fsdp_degree``: how many ways FSDP2 will cut
    each piece by rows (its scale groups are sized for that). On a meta module the pieces are
    meta too (the loader fills them, see ``meta_init``)."""
    _check_layouts(style, rowwise)
    tp, dim = mesh.size(), int(rowwise)
    why = nf4_misfit(module, rowwise, tp)
    if why is not None:
        raise ValueError(f"tensor_parallel_dim={tp} cuts an NF4 (QLoRA) weight {why}")
    weight = module.weight
    piece = nf4_shard(weight, dim, tp, mesh.get_local_rank(), row_parts=fsdp_degree)
    value = DTensor.from_local(
        piece, mesh, [Shard(dim)], run_check=False, shape=weight.shape, stride=weight.stride()
    )
    module.weight = nn.Parameter(value, requires_grad=False)
    _place(module, "bias", mesh, Replicate() if rowwise else Shard(0))
    _place(module.lora_a, "weight", mesh, Shard(1) if rowwise else Replicate())
    _place(module.lora_b, "weight", mesh, Replicate() if rowwise else Shard(0))
    group = mesh.get_group()
    if rowwise:
        module.tp_forward = partial(
            _rowwise_forward,
            group=group,
            mesh=mesh,
            layouts=tuple(style.output_layouts),
            local=style.use_local_output,
        )
    else:
        module.tp_forward = partial(_colwise_forward, group=group)
    return module
