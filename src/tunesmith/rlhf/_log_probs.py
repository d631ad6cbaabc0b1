"""Per-sequence log-probabilities of target tokens, for preference losses.

``get_batch_log_probs`` is torchtune's function (full logits in, labels aligned with tokens).
``sequence_log_probs`` is what the DPO recipe uses: it takes hidden states, projects only the
positions that have a target, a chunk at a time, and recomputes each chunk's logits in backward
instead of keeping them, so a step never holds ``[b, s, vocab]`` logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["get_batch_log_probs", "sequence_log_probs", "token_log_probs"]

CROSS_ENTROPY_IGNORE_IDX = -100


def get_batch_log_probs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_pad_token_id: int = CROSS_ENTROPY_IGNORE_IDX,
    return_average_logprobs: bool = False,
) -> torch.Tensor:
    """Log-probability of each row's labels under ``logits``.

    Args:
        logits: ``[b, s, vocab]``; position ``i`` predicts token ``i + 1``.
        labels: ``[b, s]`` aligned with the input tokens (shifted left here);
            ``label_pad_token_id`` marks positions that do not count.
        label_pad_token_id: the ignored label value.
        return_average_logprobs: the mean over counted tokens instead of the sum.

    Returns:
        ``[b]`` sums (or means), fp32 or wider, of the counted tokens' log-probabilities.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must agree on [b, s]"
        )
    targets = labels[:, 1:]
    keep = targets != label_pad_token_id
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    logp = torch.log_softmax(logits, dim=-1)
    token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    total = token.sum(-1)
    if return_average_logprobs:
        return total / keep.sum(-1).clamp(min=1)
    return total


def _token_log_probs(
    project: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = project(hidden)  # [n, vocab], at least fp32 for the softmax
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _token_log_probs_entropy(
    project: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = project(hidden)
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy


def token_log_probs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = 1024,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token, projecting ``chunk_size`` positions at a time.

    Args:
        hidden: ``[n, d]`` hidden states of the positions that predict ``targets``.
        targets: ``[n]`` long token ids.
        project: ``[m, d] -> [m, vocab]`` logits.
        chunk_size: positions projected at once; under autograd each chunk's logits are
            recomputed in backward rather than stored.
        return_entropy: also return each position's ``[n]`` entropy of the distribution.

    Returns:
        ``[n]`` log-probs (at least fp32), or ``(log-probs [n], entropy [n])``.
    """
    fn = _token_log_probs_entropy if return_entropy else _token_log_probs
    parts = []
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size)):
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(fn, project, h, t, use_reentrant=False))
        else:
            parts.append(fn(project, h, t))
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    if not parts:
        empty = hidden.new_zeros(0, dtype=dtype)
        return (empty, empty.clone()) if return_entropy else empty
    if return_entropy:
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return torch.cat(parts)


def sequence_log_probs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
    ignore_index: int = CROSS_ENTROPY_IGNORE_IDX,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each row's next-token targets, from hidden states.

    Args:
        hidden: ``[b, s, d]`` final hidden states (after the final norm).
        targets: ``[b, s]`` next-token targets (``targets[:, i]`` is predicted at position
            ``i``), ``ignore_index`` where nothing is predicted.
        project: ``[n, d] -> [n, vocab]`` logits (the model's output layer and soft-cap).
        ignore_index: the target value that does not count.
        chunk_size: positions projected at once; under autograd each chunk's logits are
            recomputed in backward rather than stored.

    Returns:
        ``(sums [b] (fp32, or fp64 for fp64 inputs), counts [b] int64)``: per-row sum of target log-probs, and the number
        of counted targets (divide for the token mean).
    """
    keep = targets != ignore_index  # [b, s]
    rows = keep.nonzero(as_tuple=True)[0]  # [n]
    selected, wanted = hidden[keep], targets[keep]  # [n, d], [n]
    per_token = token_log_probs(selected, wanted, project, chunk_size)
    assert isinstance(per_token, torch.Tensor)
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    sums = torch.zeros(targets.shape[0], dtype=dtype, device=hidden.device)
    if per_token.numel():
        sums = sums.index_add(0, rows, per_token.to(dtype))
    return sums, keep.sum(-1)
