"""Context parallelism: each rank of a ``cp`` group holds ``1 / cp`` of every sequence.

The batch's sequence dimension is cut into ``2 * cp`` equal chunks and rank ``r`` keeps chunks
``r`` and ``2 * cp - 1 - r`` ("zigzag", as torch's and torchtitan's load-balanced context
parallel): under a causal mask every rank then has the same number of (query, key) pairs to
score. Tokens, targets, RoPE positions (the *global* ones) and a packed batch's document mask
are sharded the same way; every module but self-attention works per token and needs nothing.

Self-attention all-gathers the keys and values of the group (one collective per layer for both;
its backward sums the key/value gradients of every rank into their owner) and attends its local
queries to all keys under the rows of the global mask it owns, on the model's own kernels
(``F.scaled_dot_product_attention`` with a boolean mask): exact on every device and backend,
gloo included. torch's ``torch.distributed.tensor.experimental.context_parallel`` (ring
attention) dispatches only the flash / efficient / cuDNN SDPA operators, which CPU runs never
reach (CPU SDPA is ``_scaled_dot_product_flash_attention_for_cpu``), so it is not used here.

Memory per rank: activations of ``S / cp`` tokens, the gathered keys/values of every layer
(``S`` tokens x kv heads, kept for backward), and the mask ``[b, S / cp, S]`` (boolean, and once
as SDPA's additive mask in the compute dtype) shared by all layers: quadratic in ``S`` but
divided by ``cp``.

The loss stays exact because the recipe weighs each rank's summed token loss by the trained
tokens of the whole global batch (counted on every rank's own shard, summed over every rank,
cp included), and FSDP2 shards over ``dp_shard x cp`` (``dp_shard_cp``), so its gradient
reduction sums the cp ranks' partial gradients too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["ContextParallel", "check_context_parallel_model", "enable_context_parallel"]


class _GatherSequence(torch.autograd.Function):
    """All-gather ``x [n, b, kv, s_local, hd]`` along ``s`` -> ``[n, b, kv, cp * s_local, hd]``
    (rank order); backward sums the incoming gradient over the group and keeps this rank's
    slice (all-reduce + slice on gloo, which has no reduce-scatter; reduce-scatter elsewhere)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, size: int, rank: int) -> Tensor:  # type: ignore[override]
        ctx.group, ctx.size, ctx.rank = group, size, rank
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=3)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        chunks = [c.contiguous() for c in grad.chunk(ctx.size, dim=3)]
        if dist.get_backend(ctx.group) == "gloo":
            total = torch.stack(chunks)
            dist.all_reduce(total, group=ctx.group)
            return total[ctx.rank], None, None, None
        out = torch.empty_like(chunks[ctx.rank])
        dist.reduce_scatter(out, chunks, group=ctx.group)
        return out, None, None, None


class ContextParallel:
    """This rank's share of a ``cp``-way context-parallel group.

    Args:
        group: the process group of the ``cp`` mesh dimension (None for a one-rank test).
        size: ``cp``; rank: this rank's index in the group.
        ignore_index: the target value of untrained positions (padding added to reach a
            multiple of ``2 * cp`` is untrained).
    """

    def __init__(self, group: Any, size: int, rank: int, ignore_index: int = -100):
        self.group, self.size, self.rank, self.ignore_index = group, size, rank, ignore_index
        self._additive: tuple[Tensor, torch.dtype, Tensor] | None = None

    @classmethod
    def from_mesh(cls, mesh: Any, ignore_index: int = -100) -> ContextParallel:
        cp = mesh["cp"]
        return cls(cp.get_group(), cp.size(), cp.get_local_rank(), ignore_index)

    # ------------------------------------------------------------------------- layout
    def positions(self, seq_len: int, rank: int | None = None) -> Tensor:
        """``[seq_len / cp]`` global positions held by ``rank`` (default: this rank):
        chunks ``rank`` and ``2 * cp - 1 - rank`` of ``2 * cp``. ``seq_len % (2 * cp) == 0``."""
        rank = self.rank if rank is None else rank
        n = seq_len // (2 * self.size)
        first = torch.arange(rank * n, (rank + 1) * n)
        last = torch.arange((2 * self.size - 1 - rank) * n, (2 * self.size - rank) * n)
        return torch.cat([first, last])

    def gathered_positions(self, seq_len: int) -> Tensor:
        """``[seq_len]`` global position of each key after the all-gather (rank order)."""
        return torch.cat([self.positions(seq_len, r) for r in range(self.size)])

    def shard(self, inputs: Mapping[str, Any], targets: Tensor) -> tuple[dict[str, Any], Tensor]:
        """This rank's share of a padded batch.

        Args:
            inputs: ``tokens [b, s]``, optional ``input_pos [b, s]`` (packed documents) and
                ``mask [b, s, s]`` (True = attend; None/absent = causal).
            targets: ``[b, s]`` next-token targets.

        Returns:
            ``({"tokens": [b, S/cp], "input_pos": [b, S/cp], "mask": [b, S/cp, S]},
            targets [b, S/cp])`` where ``S`` is ``s`` rounded up to a multiple of ``2 * cp``
            (padding tokens are untrained and attend only to themselves); the mask's columns
            follow the gathered key order (:meth:`gathered_positions`).
        """
        extra = set(inputs) - {"tokens", "input_pos", "mask"}
        if extra:
            raise ValueError(
                f"context_parallel_dim > 1 shards tokens, positions and masks only; this batch "
                f"also has {sorted(extra)}: use context_parallel_dim=1 for this model or data"
            )
        tokens = inputs["tokens"]
        b, s = tokens.shape
        device = tokens.device
        pad = -s % (2 * self.size)
        pos = inputs.get("input_pos")
        if pos is None:
            pos = torch.arange(s, device=device).expand(b, s)
        mask = inputs.get("mask")
        if pad:
            tokens = torch.cat([tokens, tokens.new_zeros(b, pad)], dim=1)
            targets = torch.cat([targets, targets.new_full((b, pad), self.ignore_index)], dim=1)
            tail = pos[:, -1:] + 1 + torch.arange(pad, device=device)
            pos = torch.cat([pos, tail], dim=1)
            if mask is not None:
                grown = torch.zeros(b, s + pad, s + pad, dtype=torch.bool, device=device)
                grown[:, :s, :s] = mask
                idx = torch.arange(s, s + pad, device=device)
                grown[:, idx, idx] = True
                mask = grown
        total = s + pad
        mine = self.positions(total).to(device)
        keys = self.gathered_positions(total).to(device)
        if mask is None:
            rows = (mine[:, None] >= keys[None, :])[None]  # [1, S/cp, S]
        else:
            rows = mask.index_select(1, mine).index_select(2, keys)
        sharded = {
            "tokens": tokens.index_select(1, mine),
            "input_pos": pos.index_select(1, mine),
            "mask": rows,
        }
        return sharded, targets.index_select(1, mine)

    # ---------------------------------------------------------------------- attention
    def additive_mask(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """``mask`` (bool, True = attend) as SDPA's additive ``dtype`` mask (0 / -inf), made
        once per batch and shared by every layer: CPU SDPA converts a boolean mask itself and
        keeps that copy for backward in every layer (``layers x`` the memory)."""
        cached = self._additive
        if cached is None or cached[0] is not mask or cached[1] != dtype:
            zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            self._additive = (mask, dtype, zeros.masked_fill_(~mask, float("-inf")))
        return self._additive[2]

    def gather_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``k, v [b, kv, S/cp, hd]`` of this rank -> ``[b, kv, S, hd]`` of the group (keys in
        :meth:`gathered_positions` order), one all-gather for both."""
        if self.size == 1:
            return k, v
        both = _GatherSequence.apply(torch.stack([k, v]), self.group, self.size, self.rank)
        return both[0], both[1]


def check_context_parallel_model(model: nn.Module) -> str | None:
    """Why ``model`` cannot run context parallel (a sentence), or None when it can: decoder
    self-attention only, without sliding windows or chunked attention (their masks are built
    inside the decoder from local positions)."""
    from tunesmith.modules.attention import MultiHeadAttention
    from tunesmith.modules.fusion import DeepFusionModel

    if isinstance(model, DeepFusionModel) or not hasattr(model, "layers"):
        return f"{type(model).__name__} is not a text decoder"
    for i, layer in enumerate(model.layers):
        attn = getattr(layer, "attn", None)
        if not isinstance(attn, MultiHeadAttention) or hasattr(layer, "fusion_layer"):
            return f"layer {i} ({type(layer).__name__}) is not a self-attention layer"
        if attn.sliding_window is not None or attn.chunk_size is not None:
            return f"layer {i} uses sliding-window or chunked attention"
    return None


def enable_context_parallel(model: nn.Module, cp: ContextParallel) -> None:
    """Make every self-attention layer of ``model`` gather keys/values over ``cp``."""
    for layer in model.layers:  # type: ignore[union-attr]
        layer.attn.context_parallel = cp
