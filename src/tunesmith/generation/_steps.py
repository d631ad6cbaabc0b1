"""One decoding step and its masks, under torchtune's ``torchtune.generation`` names.

tunesmith's :func:`~tunesmith.generation.generate` builds its masks itself; these are the
pieces torchtune exposes for code that writes its own decoding loop.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "generate_next_token",
    "get_causal_mask_from_padding_mask",
    "get_position_ids_from_padding_mask",
    "multinomial_sample_one",
    "sample",
    "update_stop_tokens_tracker",
]


def multinomial_sample_one(probs: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Draw one index per row of ``probs`` ``[..., v]`` given exponential noise ``q`` (same
    shape): ``argmax(probs / q)`` is a sample from ``probs``. Returns ``[..., 1]`` int."""
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(dtype=torch.int)


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample from ``logits`` ``[..., v]`` with temperature and top-k; ``q`` is the
    exponential noise (drawn when None). Returns ``[..., 1]`` token ids."""
    logits = logits / max(temperature, 1e-5)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
        logits = torch.where(logits < kth, torch.full_like(logits, -float("inf")), logits)
    probs = torch.softmax(logits, dim=-1)
    if q is None:
        q = torch.empty_like(probs).exponential_(1)
    return multinomial_sample_one(probs, q)


def generate_next_token(
    model: nn.Module,
    input_pos: torch.Tensor,
    x: torch.Tensor,
    q: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``x`` ``[b, s]`` and sample from the last position.

    Returns ``(tokens [b, 1], logits [b, s, v])``.
    """
    logits = model(x, input_pos=input_pos, mask=mask)
    if isinstance(logits, list):
        logits = torch.cat(logits, dim=1)
    return sample(logits[:, -1].clone(), temperature=temperature, top_k=top_k, q=q), logits


def update_stop_tokens_tracker(
    tokens: torch.Tensor, stop_tokens: torch.Tensor, stop_token_reached: torch.Tensor
) -> torch.Tensor:
    """``stop_token_reached`` ``[b]`` or-ed with whether ``tokens`` ``[b, 1]`` is a stop token."""
    return stop_token_reached | torch.isin(tokens, stop_tokens).flatten()


def get_causal_mask_from_padding_mask(
    padding_mask: torch.Tensor, target_seq_len: int | None = None
) -> torch.Tensor:
    """A ``[b, s, target_seq_len]`` bool attention mask from a ``[b, s]`` padding mask
    (True = real token): causal, padded keys masked, and each position sees itself.

    Raises:
        ValueError: when ``target_seq_len`` is shorter than ``s``.
    """
    bsz, seq_len = padding_mask.shape
    target = seq_len if target_seq_len is None else target_seq_len
    if target < seq_len:
        raise ValueError(f"target_seq_len ({target}) must be >= the sequence length ({seq_len})")
    causal = torch.tril(torch.ones(seq_len, target, dtype=torch.bool, device=padding_mask.device))
    mask = causal.expand(bsz, seq_len, target).clone()
    mask[:, :, :seq_len] &= padding_mask.bool()[:, None, :]
    mask.diagonal(dim1=1, dim2=2).fill_(True)
    return mask


def get_position_ids_from_padding_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """Positions ``[b, s]`` counting real tokens from 0 (left padding gets position 0)."""
    return ((padding_mask.cumsum(-1) - 1) * padding_mask).to(torch.int)
