"""Boolean attention masks. Convention: ``mask[b, i, j] = True`` means query i may attend key j."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "causal_mask",
    "padding_to_causal_mask",
    "padded_attention_inputs",
    "packed_causal_mask",
    "sliding_window_band",
]


def causal_mask(
    seq_len: int, *, device: torch.device | None = None, kv_len: int | None = None
) -> Tensor:
    """Lower-triangular mask ``[seq_len, kv_len]``; the queries are the last ``seq_len`` keys.

    With ``kv_len > seq_len`` (decoding with a cache) query i sits at key index
    ``kv_len - seq_len + i``.
    """
    kv_len = seq_len if kv_len is None else kv_len
    q_idx = torch.arange(kv_len - seq_len, kv_len, device=device)
    k_idx = torch.arange(kv_len, device=device)
    return k_idx[None, :] <= q_idx[:, None]


def padding_to_causal_mask(padding_mask: Tensor) -> Tensor:
    """Causal mask that also hides padding keys.

    Args:
        padding_mask: ``[b, s]`` bool, True for real tokens, False for padding.

    Returns:
        ``[b, s, s]`` bool. Rows of padding queries attend only to themselves, so that no row
        is fully masked (a fully masked row turns into NaN in softmax and would leak NaN
        through ``0 * NaN`` into later layers).
    """
    b, s = padding_mask.shape
    causal = causal_mask(s, device=padding_mask.device)
    mask = causal[None] & padding_mask[:, None, :].bool()
    eye = torch.eye(s, dtype=torch.bool, device=padding_mask.device)
    return mask | eye[None]


def padded_attention_inputs(padding_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mask and positions for one forward over a padded batch, each row computed as if alone.

    Args:
        padding_mask: ``[b, s]`` bool, True for real tokens (padding anywhere, e.g. on the left).

    Returns:
        ``(mask [b, s, s] bool, input_pos [b, s] long)``: :func:`padding_to_causal_mask`, and
        positions that count real tokens only (the first real token of a row sits at 0).
    """
    valid = padding_mask.bool()
    input_pos = (valid.long().cumsum(dim=-1) - 1).clamp(min=0)
    return padding_to_causal_mask(valid), input_pos


def packed_causal_mask(document_ids: Tensor) -> Tensor:
    """Causal mask restricted to each packed document.

    Args:
        document_ids: ``[b, s]`` integer id of the document each token belongs to.

    Returns:
        ``[b, s, s]`` bool: query i attends key j iff ``j <= i`` and both are in the same document.
    """
    s = document_ids.shape[-1]
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    return same_doc & causal_mask(s, device=document_ids.device)[None]


def sliding_window_band(q_idx: Tensor, k_idx: Tensor, window: int) -> Tensor:
    """``[s_q, s_kv]`` bool: key j is visible from query i iff ``i - window < j <= i``.

    Matches Hugging Face's sliding-window overlay (``kv_idx > q_idx - sliding_window``).
    """
    diff = q_idx[:, None] - k_idx[None, :]
    return (diff >= 0) & (diff < window)
