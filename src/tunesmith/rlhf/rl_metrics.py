"""Per-step statistics the online-RL recipes log: entropy, clip fraction, policy KL, and
reward / advantage / response-length summaries.

Every function is computed without gradient and returns detached float32 scalars (or a dict
of them named ``group/stat``), ready for the progress bar and the metric loggers. Masks are
bool ``[b, n]`` with True at response tokens that count. Values are local to the batch given;
a data-parallel recipe reduces them across ranks itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = [
    "token_entropy",
    "masked_entropy",
    "clip_fraction",
    "approx_kl",
    "tensor_stats",
    "reward_stats",
    "advantage_stats",
    "response_length_stats",
]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = x.float()
    if mask is None:
        return x.mean() if x.numel() else x.new_zeros(())
    m = mask.to(torch.float32).expand_as(x)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` at every position: ``[b, n, v] -> [b, n]``
    float32 (``logsumexp(z) - sum(softmax(z) * z)``, stable for large logits)."""
    z = logits.float() / temperature
    return torch.logsumexp(z, dim=-1) - (F.softmax(z, dim=-1) * z).sum(-1)


@torch.no_grad()
def masked_entropy(
    entropy_or_logits: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Mean per-token entropy over ``mask``.

    Args:
        entropy_or_logits: ``[b, n]`` per-token entropies (e.g. from
            ``response_logprobs(..., return_entropy=True)``) or ``[b, n, v]`` logits.
        mask: ``[b, n]`` bool.
        temperature: applied to logits.
    """
    x = entropy_or_logits
    if x.dim() == 3:
        x = token_entropy(x, temperature)
    return _masked_mean(x, mask)


@torch.no_grad()
def clip_fraction(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    advantages: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of tokens whose ratio ``exp(logprobs - old_logprobs)`` lies outside
    ``[1 - epsilon, 1 + epsilon_high]``. With ``advantages`` (``[b]`` or ``[b, n]``), only the
    side the clipped objective acts on counts (below for A < 0, above for A > 0), i.e. the
    tokens whose gradient the clipping removes (TRL's ``clip_ratio/region``)."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logprobs.float() - old_logprobs.float())
    below, above = ratio < 1 - epsilon, ratio > 1 + high
    if advantages is not None:
        adv = advantages[:, None] if advantages.dim() == 1 else advantages
        below, above = below & (adv < 0), above & (adv > 0)
    return _masked_mean((below | above).float(), mask)


@torch.no_grad()
def approx_kl(
    logprobs: torch.Tensor,
    other_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    estimator: str = "k3",
) -> torch.Tensor:
    """Sample estimate of ``KL(p || q)`` per token, averaged over ``mask``, where the tokens
    were sampled from ``p`` (``logprobs``) and ``q`` gives ``other_logprobs``; with
    ``d = other - logprobs``: ``k1 = -d``, ``k2 = d^2 / 2`` (torchtune's
    ``approx_policy_kls``), ``k3 = exp(d) - d - 1`` (Schulman's unbiased, non-negative
    estimator; TRL's KL)."""
    d = other_logprobs.float() - logprobs.float()
    if estimator == "k1":
        per_token = -d
    elif estimator == "k2":
        per_token = 0.5 * d.pow(2)
    elif estimator == "k3":
        per_token = torch.expm1(d) - d
    else:
        raise ValueError(f"estimator must be 'k1', 'k2' or 'k3'; got {estimator!r}")
    return _masked_mean(per_token, mask)


@torch.no_grad()
def tensor_stats(
    x: torch.Tensor, prefix: str, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``{prefix/mean, prefix/std, prefix/min, prefix/max}`` of ``x`` (over ``mask``); std is
    the population std (0 for one value); all 0 for an empty selection."""
    x = x.float()
    vals = x[mask.expand_as(x)] if mask is not None else x.reshape(-1)
    if vals.numel() == 0:
        zero = x.new_zeros(())
        return {f"{prefix}/{k}": zero for k in ("mean", "std", "min", "max")}
    return {
        f"{prefix}/mean": vals.mean(),
        f"{prefix}/std": vals.std(unbiased=False),
        f"{prefix}/min": vals.min(),
        f"{prefix}/max": vals.max(),
    }


@torch.no_grad()
def reward_stats(
    total: torch.Tensor,
    per_function: Mapping[str, torch.Tensor] | None = None,
    group_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Reward summaries: ``reward/{mean,std,min,max}`` of the total ``[b]``, and
    ``reward/<name>/{mean,std}`` per reward function. With ``group_size``: also
    ``reward/group_std`` (mean within-group std, population) and ``reward/zero_std_fraction``
    (groups whose rewards are all equal: they carry no GRPO signal)."""
    out = tensor_stats(total, "reward")
    for name, values in (per_function or {}).items():
        s = tensor_stats(values, f"reward/{name}")
        out[f"reward/{name}/mean"] = s[f"reward/{name}/mean"]
        out[f"reward/{name}/std"] = s[f"reward/{name}/std"]
    if group_size is not None and group_size > 0 and total.numel() % group_size == 0:
        groups = total.float().view(-1, group_size)
        std = groups.std(dim=1, unbiased=False)
        out["reward/group_std"] = std.mean()
        out["reward/zero_std_fraction"] = (groups.amax(1) == groups.amin(1)).float().mean()
    return out


@torch.no_grad()
def advantage_stats(
    advantages: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``advantage/{mean,std,min,max}`` of ``[b]`` (or ``[b, n]`` over ``mask``) advantages."""
    return tensor_stats(advantages, "advantage", mask if advantages.dim() > 1 else None)


@torch.no_grad()
def response_length_stats(
    mask: torch.Tensor, truncated: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``response_length/{mean,min,max}`` from the response mask ``[b, n]`` and, with
    ``truncated [b]`` bool (no stop token within the budget), ``truncated_fraction``."""
    lengths = mask.sum(-1).float()
    s = tensor_stats(lengths, "response_length")
    out = {k: v for k, v in s.items() if not k.endswith("/std")}
    if truncated is not None:
        out["truncated_fraction"] = (
            truncated.float().mean() if truncated.numel() else lengths.new_zeros(())
        )
    return out
