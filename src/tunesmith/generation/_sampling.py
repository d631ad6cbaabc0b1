"""Turning next-token logits into tokens: greedy, temperature, top-k and top-p sampling."""

from __future__ import annotations

import torch

__all__ = ["sample_next_token"]


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row.

    Args:
        logits: ``[b, vocab]`` scores for the next position.
        temperature: 0 (or below 1e-5) means greedy argmax; otherwise logits are divided by it.
        top_k: keep only the k most likely tokens (None or 0 = all).
        top_p: keep the smallest set of tokens whose probability sums to at least p
            (nucleus sampling; None or 1.0 = all). Applied after top-k.
        rng: generator for reproducible sampling (on the device of ``logits``).

    Returns:
        ``[b]`` long tensor of token ids.
    """
    logits = logits.float()
    if temperature is None or temperature < 1e-5:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (keeps at least one)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=rng).squeeze(-1)
