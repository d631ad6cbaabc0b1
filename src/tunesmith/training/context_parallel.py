"""Context parallelism: each rank of a ``cp`` group holds ``1 / cp`` of every sequence.

Two methods (``ContextParallel.method``; the recipe key ``context_parallel_method``):

- ``"ulysses"`` (head-sharded all-to-all, ``training.ulysses``): rank ``r`` holds the
  ``r``-th of ``cp`` consecutive chunks; attention exchanges tokens for heads, runs over whole
  sequences of ``H / cp`` heads with the model's kernels (``is_causal`` SDPA, or per-document
  attention of packed rows: :attr:`ContextParallel.documents`), and exchanges back. No mask is
  materialised; query heads (per tensor-parallel rank) must divide by ``cp``, key/value
  heads divide by it or divide it (then each is repeated ``cp / kv`` times).
- ``"allgather"``: the sequence is cut into ``2 * cp`` chunks and rank ``r`` keeps chunks
  ``r`` and ``2 * cp - 1 - r`` ("zigzag", as torch's and torchtitan's load-balanced context
  parallel: under a causal mask every rank then has the same number of (query, key) pairs
  to score). Self-attention all-gathers the keys and values of the group (one collective per
  layer for both; its backward sums the key/value gradients of every rank into their owner)
  and attends its local queries to all keys under the rows of the global mask it owns
  (``F.scaled_dot_product_attention`` with a boolean mask). Works for any head count. Memory
  per rank: the gathered keys/values of every layer (``S`` tokens x kv heads) and the mask
  ``[b, S / cp, S]`` (boolean, and once as SDPA's additive mask in the compute dtype) shared
  by all layers: quadratic in ``S``, divided by ``cp``.

Tokens, targets, RoPE positions (the *global* ones) and a packed batch's documents are
sharded by :meth:`ContextParallel.shard`; every module but self-attention works per token and
needs nothing. Both are exact on every device and backend, gloo included. torch's
``torch.distributed.tensor.experimental.context_parallel`` (ring attention) dispatches only
the flash / efficient / cuDNN SDPA operators, which CPU runs never reach (CPU SDPA is
``_scaled_dot_product_flash_attention_for_cpu``), so it is not used here.

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

from tunesmith.modules.attention_kernels import Documents

__all__ = [
    "METHODS",
    "ContextParallel",
    "check_context_parallel_model",
    "context_parallel_method",
    "enable_context_parallel",
]

#: ``context_parallel_method`` values: ``auto`` picks ``ulysses`` when the heads divide by cp
METHODS = ("auto", "ulysses", "allgather")


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
        method: ``"allgather"`` (zigzag shards, gathered keys/values, mask rows) or
            ``"ulysses"`` (consecutive shards, head-sharded all-to-all attention).

    With ``"ulysses"``, :meth:`shard` also sets (for every layer of that forward)
    ``documents``: the :class:`~tunesmith.modules.attention_kernels.Documents` of a packed
    batch's rows concatenated (``b * S`` tokens), or ``full_mask [b, S, S]`` for a batch with a
    mask but no ``input_pos``; both None for causal rows.
    """

    def __init__(
        self,
        group: Any,
        size: int,
        rank: int,
        ignore_index: int = -100,
        method: str = "allgather",
    ):
        if method not in ("allgather", "ulysses"):
            raise ValueError(f"context parallel method {method!r} is 'allgather' or 'ulysses'")
        self.group, self.size, self.rank, self.ignore_index = group, size, rank, ignore_index
        self.method = method
        self._additive: tuple[Tensor, torch.dtype, Tensor] | None = None
        self.documents: Documents | None = None
        self.full_mask: Tensor | None = None

    @classmethod
    def from_mesh(
        cls, mesh: Any, ignore_index: int = -100, method: str = "allgather"
    ) -> ContextParallel:
        cp = mesh["cp"]
        return cls(cp.get_group(), cp.size(), cp.get_local_rank(), ignore_index, method)

    # ------------------------------------------------------------------------- layout
    def positions(self, seq_len: int, rank: int | None = None) -> Tensor:
        """``[seq_len / cp]`` global positions held by ``rank`` (default: this rank):
        chunks ``rank`` and ``2 * cp - 1 - rank`` of ``2 * cp`` (allgather), chunk ``rank`` of
        ``cp`` (ulysses). ``seq_len % (2 * cp) == 0``."""
        rank = self.rank if rank is None else rank
        if self.method == "ulysses":
            n = seq_len // self.size
            return torch.arange(rank * n, (rank + 1) * n)
        n = seq_len // (2 * self.size)
        first = torch.arange(rank * n, (rank + 1) * n)
        last = torch.arange((2 * self.size - 1 - rank) * n, (2 * self.size - rank) * n)
        return torch.cat([first, last])

    def gathered_positions(self, seq_len: int) -> Tensor:
        """``[seq_len]`` global position of each key after the all-gather (rank order;
        ``arange`` for ulysses)."""
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
            follow the gathered key order (:meth:`gathered_positions`). Ulysses returns no
            mask and sets :attr:`documents` / :attr:`full_mask` instead.
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
        if self.method == "ulysses" and inputs.get("input_pos") is not None:
            mask = None  # the documents come from input_pos; no [S, S] mask is needed
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
        if self.method == "ulysses":
            self.documents, self.full_mask = None, None
            if inputs.get("input_pos") is not None:  # packed: documents restart at 0
                self.documents = _row_documents(inputs["input_pos"], total, device)
            elif mask is not None:
                self.full_mask = mask
            local = {"tokens": tokens.index_select(1, mine), "input_pos": pos.index_select(1, mine)}
            return local, targets.index_select(1, mine)
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


def _row_documents(input_pos: Tensor, total: int, device: torch.device) -> Documents:
    """The documents of ``b`` packed rows ``input_pos [b, s]`` (one starts at each 0 and at
    every row's start, as ``recipes._unpad.unpad_rows`` reads them), each row padded to
    ``total`` by one more document, concatenated over the rows."""
    b, s = input_pos.shape
    starts = input_pos == 0
    starts[:, 0] = True
    lens: list[int] = []
    for row in starts.cpu():
        idx = torch.nonzero(row).flatten().tolist() + [s]
        lens += [e - a for a, e in zip(idx, idx[1:])]
        if total > s:
            lens.append(total - s)
    return Documents(lens, device)


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


def context_parallel_method(requested: str, model: nn.Module, cp: int, tp: int = 1) -> str:
    """``"ulysses"`` or ``"allgather"`` for ``requested`` (one of :data:`METHODS`) on the
    self-attention layers of ``model`` (heads counted before tensor parallelism splits them
    ``tp`` ways): ``auto`` is ulysses when every layer's heads can be split ``cp`` ways
    (``ulysses.head_split_problem``). ValueError (one sentence) for ``ulysses`` on heads
    that cannot."""
    if requested not in METHODS:
        raise ValueError(f"context_parallel_method={requested!r}: choose one of {list(METHODS)}")
    if requested == "allgather":
        return requested
    from tunesmith.training.ulysses import head_split_problem

    for layer in model.layers:  # type: ignore[union-attr]
        why = head_split_problem(layer.attn.num_heads, layer.attn.num_kv_heads, cp, tp)
        if why is not None:
            if requested == "auto":
                return "allgather"
            raise ValueError(
                f"context_parallel_method=ulysses: {why}; use context_parallel_method="
                "allgather (any head count) or a context_parallel_dim dividing the heads"
            )
    return "ulysses"


def enable_context_parallel(model: nn.Module, cp: ContextParallel) -> None:
    """Make every self-attention layer of ``model`` attend over the whole sequences of ``cp``
    (gathered keys/values, or head-sharded all-to-all: ``cp.method``)."""
    for layer in model.layers:  # type: ignore[union-attr]
        layer.attn.context_parallel = cp
