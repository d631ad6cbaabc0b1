"""Block-causal masks for packed sequences with torchtune 0.6.1's API
(``torchtune.modules.attention_utils``).

torchtune builds a flex-attention ``BlockMask`` for packed batches where flex attention runs;
tunesmith's attention takes document lengths (``seq_lens``) and picks its kernel itself
(:mod:`tunesmith.modules.attention_kernels`, flex among them), so the masks built here are
always dense ``[b, s, s]`` bool tensors and ``_SUPPORTS_FLEX_ATTENTION`` (torchtune's switch
between the two, which its tests patch) is False.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["create_block_causal_mask", "packed_block_causal_mask"]

_SUPPORTS_FLEX_ATTENTION = False
"""torchtune's "build a flex BlockMask" switch; tunesmith's collated masks are always dense."""


def _get_document_ids_from_seq_lens(seq_lens: Sequence[Tensor]) -> Tensor:
    """``seq_lens`` (per pack, the lengths of its documents) -> document ids ``[b, s]``:
    ``[2, 3, 1]`` -> ``[0, 0, 1, 1, 1, 2]``."""
    rows = [
        torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens.long())
        for lens in seq_lens
    ]
    return torch.stack(rows)


def create_block_causal_mask(seq_lens: Sequence[Tensor]) -> Tensor:
    """Block-causal masks ``[b, s, s]`` (bool, True = attend): each document of a pack sees
    itself causally and nothing else. ``seq_lens``: per pack, a 1-D tensor of document
    lengths summing to ``s`` (the same ``s`` for every pack)."""
    masks = [
        torch.block_diag(
            *[torch.ones(n, n, dtype=torch.bool, device=lens.device).tril() for n in lens.tolist()]
        )
        for lens in seq_lens
    ]
    return torch.stack(masks)


def packed_block_causal_mask(seq_lens: Sequence[Tensor]) -> Tensor:
    """The mask of a packed batch: :func:`create_block_causal_mask` (dense, see the module
    doc for why never a flex ``BlockMask``)."""
    return create_block_causal_mask(seq_lens)


def _sdpa_or_flex_attention() -> Callable[..., Tensor]:
    """torchtune's attention call ``(q, k, v, mask, dropout_p, is_causal) -> [b, h, s, hd]``:
    SDPA over dense masks (``mask [b, s, s_kv]`` bool, broadcast over heads)."""

    def attention(
        q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, is_causal: bool
    ) -> Tensor:
        if mask is not None:
            mask = mask[:, None, :, :]
        return nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
        )

    return attention
