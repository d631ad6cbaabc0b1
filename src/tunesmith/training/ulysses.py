"""Head-sharded context-parallel attention (all-to-all, as DeepSpeed-Ulysses).

Each rank of a ``cp`` group holds ``S / cp`` consecutive tokens of every sequence, with all
heads. Before attention one all-to-all (queries, keys and values in one collective) turns
that into all ``S`` tokens of ``H / cp`` query heads and ``kv / cp`` key/value heads, in
natural sequence order (rank ``r`` holds tokens ``[r S / cp, (r + 1) S / cp)``); attention
then runs over whole sequences with the model's own kernels (``is_causal=True`` SDPA for
unpacked rows, per-document attention for packed ones), and a second all-to-all gives every
rank its own tokens of all heads back. The backward of each all-to-all is the reverse
all-to-all (``training.distributed.all_to_all``), so gradients are exact.

Memory per rank: the attention inputs and outputs of ``S`` tokens x ``H / cp`` heads (the same
size as ``S / cp`` tokens x ``H`` heads) and whatever the kernel keeps: O(S) for SDPA's flash
kernels (CPU's included) and the per-document loop; no ``[S / cp, S]`` mask. Requires
``num_heads`` (per tensor-parallel rank) divisible by ``cp`` and ``num_kv_heads`` divisible by
it or dividing it (:func:`head_split_problem`; with fewer key/value heads than ranks each is
repeated ``cp / kv`` times before the exchange, and autograd sums the copies' gradients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tunesmith.modules.attention_kernels import (
    dense_attention,
    document_attention,
    sink_attention,
)
from tunesmith.training.distributed import all_to_all

if TYPE_CHECKING:
    from tunesmith.training.context_parallel import ContextParallel

__all__ = ["head_split_problem", "ulysses_attention"]


def head_split_problem(num_heads: int, num_kv_heads: int, cp: int, tp: int = 1) -> str | None:
    """Why ``cp`` ranks cannot split these heads (a sentence), or None: the query heads of
    each tensor-parallel rank (``heads / tp``) must divide by ``cp``, and its key/value heads
    divide by ``cp`` or divide ``cp`` (fewer key/value heads than ranks: each is repeated
    ``cp / kv`` times, so every rank gets the one its query heads share)."""
    heads, kv = num_heads // tp, num_kv_heads // tp
    per = " per tensor-parallel rank" if tp > 1 else ""
    if heads % cp:
        return f"num_heads={heads}{per} is not divisible by context_parallel_dim={cp}"
    if kv % cp and cp % kv:
        return (
            f"num_kv_heads={kv}{per} neither divides nor is divisible by context_parallel_dim={cp}"
        )
    return None


def _exchange(x: Tensor, cp: ContextParallel, scatter: int, gather: int) -> Tensor:
    """Cut ``x`` into ``cp.size`` equal blocks along ``scatter``, send block ``j`` to rank
    ``j`` and concatenate the blocks received along ``gather`` in rank order."""
    n = cp.size
    send = torch.stack(x.chunk(n, dim=scatter))  # [n, ...]: block j for rank j
    rows = list(send.shape)
    recv = all_to_all(send.flatten(0, 1), [rows[1]] * n, [rows[1]] * n, cp.group)
    return torch.cat(recv.view(rows).unbind(0), dim=gather)


def _to_heads(tensors: list[Tensor], cp: ContextParallel) -> list[Tensor]:
    """``[b, n_i, s, hd]`` of this rank's tokens -> ``[b, n_i / cp, S, hd]`` (this rank's
    heads, all tokens); tensors with the same ``hd`` share one collective."""
    if len({t.shape[-1] for t in tensors}) > 1:
        return [_to_heads([t], cp)[0] for t in tensors]
    n = cp.size
    # [b, cp, n_i / cp, s, hd] side by side, so block j holds rank j's heads of every tensor
    packed = torch.cat([t.unflatten(1, (n, t.shape[1] // n)) for t in tensors], dim=2)
    full = _exchange(packed.flatten(1, 2), cp, scatter=1, gather=2)
    return list(full.split([t.shape[1] // n for t in tensors], dim=1))


def ulysses_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cp: ContextParallel,
    *,
    scale: float,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> Tensor:
    """Attention over the whole sequence of the ``cp`` group, heads split over its ranks.

    Args:
        q: ``[b, h, s, hd]`` this rank's ``s = S / cp`` tokens (after RoPE).
        k, v: ``[b, kv, s, hd]`` (``v`` may have its own head width).
        cp: the group; its :attr:`~ContextParallel.documents` (packed rows, flattened over
            the batch) or :attr:`~ContextParallel.full_mask` (``[b, S, S]``) from ``shard``,
            both None for causal rows.
        sinks: ``[h]`` per-head sink logits (this rank keeps its heads' share).

    Returns:
        ``[b, h, s, hd_v]``: this rank's tokens, every head.
    """
    if k.shape[1] < cp.size:  # GQA with fewer kv heads than ranks: one (repeated) per rank
        k, v = (t.repeat_interleave(cp.size // k.shape[1], dim=1) for t in (k, v))
    qh, kh, vh = _to_heads([q, k, v], cp)  # [b, h / cp, S, hd]
    b, hh, total, _ = qh.shape
    if sinks is not None:
        sinks = sinks[cp.rank * hh : (cp.rank + 1) * hh]
    docs, mask = cp.documents, cp.full_mask
    if docs is not None:  # the rows' documents, one concatenation [1, h / cp, b S, hd]
        flat = [t.transpose(0, 1).reshape(1, t.shape[1], b * total, -1) for t in (qh, kh, vh)]
        if sinks is not None:
            out = sink_attention(*flat, docs.dense_mask(), scale, sinks)
        else:
            out = document_attention(*flat, docs, scale=scale, softcap=softcap)
        out = out.reshape(hh, b, total, -1).transpose(0, 1)
    else:
        attn_mask = None if mask is None else mask[:, None]
        if sinks is not None:
            out = sink_attention(qh, kh, vh, attn_mask, scale, sinks)
        else:
            out = dense_attention(qh, kh, vh, attn_mask, scale=scale, softcap=softcap)
    return _exchange(out, cp, scatter=2, gather=1)  # [b, h, s, hd_v]
