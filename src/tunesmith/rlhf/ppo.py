"""PPO for language models: the clipped policy + value loss, generalised advantage estimation,
KL-shaped rewards, whitening, and the sequence helpers of torchtune's PPO recipe.

Every name, argument and number is torchtune 0.6.1's (``torchtune.rlhf.<name>`` and
``torchtune.rlhf.loss.PPOLoss`` resolve here), so its PPO configs and code written against
``torchtune.rlhf`` keep working. Masks follow torchtune's conventions, which differ by function:
``masked_mean``/``whiten``/``estimate_advantages``/``PPOLoss`` take masks where True means *use
this value*; ``get_reward_penalty_mask``/``get_unmasked_sequence_lengths`` take *padding* masks
where True means *padding*.

Shapes: ``b`` batch, ``n`` response length, ``p`` prompt (context) length, ``v`` vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PPOLoss",
    "PPOStats",
    "Trajectory",
    "ChosenRejectedOutputs",
    "estimate_advantages",
    "whiten",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "get_rewards_ppo",
    "get_reward_penalty_mask",
    "truncate_sequence_at_first_stop_token",
    "logits_to_logprobs",
    "batched_logits_to_logprobs",
    "truncate_sequence_for_logprobs",
    "get_unmasked_sequence_lengths",
]


class Trajectory(NamedTuple):
    """One PPO rollout batch (torchtune's field names and order).

    Attributes:
        query_responses: ``[b, p + n]`` prompt and response tokens.
        logprobs: ``[b, n]`` the policy's log-probs of the response tokens at sampling time.
        ref_logprobs: ``[b, n]`` the reference model's log-probs of the same tokens.
        values: ``[b, n]`` the value model's estimates.
        masks: ``[b, p + n, p + n]`` attention masks.
        position_ids: ``[b, p + n]``.
        response_padding_masks: ``[b, n]`` True at padding (after the first stop token).
        value_padding_masks: ``[b, n]`` True where the value does not count.
        value_seq_idxs: ``[b]`` index of each response's last real token.
        scores: ``[b]`` reward-model scores (after penalties).
        seq_lens: ``[b]`` response lengths (0-indexed last real token, as torchtune).
    """

    query_responses: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    masks: torch.Tensor
    position_ids: torch.Tensor
    response_padding_masks: torch.Tensor
    value_padding_masks: torch.Tensor
    value_seq_idxs: torch.Tensor
    scores: torch.Tensor
    seq_lens: torch.Tensor


class PPOStats(NamedTuple):
    """Statistics of one PPO optimisation step (each a scalar tensor).

    Attributes:
        loss: total loss; policy_loss / value_loss: its two parts; ratios: mean new/old
        probability ratio; clipfrac: fraction of clipped ratios; approx_policy_kls: estimated
        KL between the policy before and after the step.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    ratios: torch.Tensor
    clipfrac: torch.Tensor
    approx_policy_kls: torch.Tensor


@dataclass
class ChosenRejectedOutputs:
    """Outputs of a chosen/rejected concatenated forward (torchtune main's type): log-probs
    ``[b]`` each and the logits they came from."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_logits: torch.Tensor
    rejected_logits: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True (over ``dim``, or all of it).

    ``sum(x * mask) / (sum(mask) + 1e-8)``: an all-False mask gives 0, not NaN.
    """
    return (x * mask).sum(dim=dim) / (mask.sum(dim=dim) + 1e-8)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the positions where ``mask`` is True."""
    return (x * mask).sum(dim=dim)


def masked_var(
    centered_values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True
) -> torch.Tensor:
    """Variance (a scalar) of already mean-centred values over the positions where ``mask``
    is True; ``unbiased`` applies Bessel's correction with the count of True positions."""
    var = masked_mean(centered_values.pow(2), mask)
    if unbiased:
        count = mask.sum() + 1e-8
        var = var * (count / (count - 1))
    return var


def whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True
) -> torch.Tensor:
    """Normalise ``x`` to unit variance: ``(x - mean) / sqrt(var + 1e-8)`` with the (masked)
    mean and unbiased variance over all elements; ``shift_mean`` adds the mean back (so only
    the scale changes). Same shape as ``x``."""
    if mask is None:
        mean, var = x.mean(), x.var()
    else:
        mean = masked_mean(x, mask)
        var = masked_var(x - mean, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out + mean if shift_mean else out


def estimate_advantages(
    values: torch.Tensor,
    rewards: torch.Tensor,
    gamma: float,
    lmbda: float,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2015, arXiv:1506.02438).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V_n = 0``), ``A_t = delta_t + gamma * lmbda *
    A_{t+1}``, ``returns = A + V``; the advantages are then whitened over the batch (over
    ``masks`` where given, and set to 0 outside it).

    Args:
        values: ``[b, n]`` value estimates.
        rewards: ``[b, n]`` per-token rewards.
        gamma: discount factor.
        lmbda: GAE lambda.
        masks: ``[b, n]`` bool, True at positions that count.

    Returns:
        ``(advantages [b, n], returns [b, n])``.
    """
    n = values.shape[-1]
    running = torch.zeros_like(values[:, 0])
    out = []
    for t in range(n - 1, -1, -1):
        next_value = values[:, t + 1] if t + 1 < n else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lmbda * running
        out.append(running)
    advantages = torch.stack(out[::-1], dim=1)
    returns = advantages + values
    advantages = whiten(advantages, mask=masks)
    if masks is not None:
        advantages = advantages.masked_fill(~masks, 0.0)
    return advantages, returns


def get_rewards_ppo(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kl_coeff: float,
    valid_score_idxs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KL-shaped per-token rewards: ``-kl_coeff * (logprobs - ref_logprobs)`` at every token,
    plus the sequence's score at its last valid position (``valid_score_idxs [b]``, default
    the last column).

    Args:
        scores: ``[b]`` reward-model scores.
        logprobs, ref_logprobs: ``[b, n]`` policy and reference log-probs.
        kl_coeff: KL penalty coefficient.
        valid_score_idxs: ``[b]`` long, where each row's score is added.

    Returns:
        ``(total_reward [b, n], kl [b, n], kl_reward [b, n])``.
    """
    kl = logprobs - ref_logprobs
    kl_reward = -kl_coeff * kl
    if valid_score_idxs is None:
        valid_score_idxs = torch.full_like(scores, logprobs.shape[-1] - 1, dtype=torch.long)
    total = kl_reward.scatter_add(1, valid_score_idxs[:, None], scores[:, None].to(kl_reward))
    return total, kl, kl_reward


def get_reward_penalty_mask(
    padding_masks: torch.Tensor,
    seq_lens: torch.Tensor,
    penalise_no_eos: bool = True,
    min_response_length: int | None = None,
) -> torch.Tensor:
    """Which responses get ``reward_penalty`` instead of their score: ``[b]`` bool.

    A response is penalised when it has no stop token (no padding after truncation at the
    first stop token; with ``penalise_no_eos``) or is shorter than ``min_response_length``.

    Args:
        padding_masks: ``[b, n]`` bool, True at padding.
        seq_lens: ``[b]`` response lengths.
        penalise_no_eos: penalise responses without a stop token.
        min_response_length: penalise responses with ``seq_lens`` below it.
    """
    penalty = torch.zeros_like(seq_lens, dtype=torch.bool)
    if penalise_no_eos:
        penalty = ~padding_masks.any(-1)
    if min_response_length is not None:
        penalty = penalty | (seq_lens < min_response_length)
    return penalty


def truncate_sequence_at_first_stop_token(
    sequences: torch.Tensor, stop_tokens: torch.Tensor, fill_value: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace everything after each row's first stop token by ``fill_value``.

    Modifies ``sequences`` in place (as torchtune does) and returns it.

    Args:
        sequences: ``[b, n]`` tokens.
        stop_tokens: 1-D tensor of stop token ids.
        fill_value: the padding id.

    Returns:
        ``(padding_mask [b, n] bool, True after the first stop token; sequences [b, n])``.
    """
    is_stop = torch.isin(sequences, stop_tokens.to(sequences.device))
    stops_so_far = is_stop.cumsum(dim=-1)
    padding = (stops_so_far > 1) | ((stops_so_far == 1) & ~is_stop)
    sequences[padding] = fill_value
    return padding, sequences


def logits_to_logprobs(
    logits: torch.Tensor, sequences: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``[b, n]`` log-probs of ``sequences [b, n]`` under ``log_softmax(logits [b, n, v] / T)``."""
    logprobs = F.log_softmax(logits / temperature, dim=-1)
    return logprobs.gather(-1, sequences[..., None]).squeeze(-1)


def batched_logits_to_logprobs(
    logits: torch.Tensor, sequences: torch.Tensor, temperature: float = 1.0, chunk_size: int = 4
) -> torch.Tensor:
    """:func:`logits_to_logprobs` ``chunk_size`` rows at a time (lower peak memory);
    returns float32 ``[b, n]`` (torchtune main's function)."""
    out = torch.empty_like(sequences, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        out[rows] = logits_to_logprobs(logits[rows], sequences[rows], temperature)
    return out


def truncate_sequence_for_logprobs(
    query_response_logits: torch.Tensor, context_length: int
) -> torch.Tensor:
    """The logits that predict the response tokens: ``[b, p + n, v] -> [b, n, v]``
    (positions ``p - 1 .. p + n - 2``)."""
    return query_response_logits[:, context_length - 1 : -1]


def get_unmasked_sequence_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last non-padding position, ``[b]`` long (0 for an all-padding row).

    Args:
        mask: ``[b, s]`` bool, True at padding.
    """
    last = (~mask).cumsum(dim=-1).argmax(dim=-1).to(torch.long)
    return last.clip(0, mask.shape[1] - 1)


class PPOLoss(nn.Module):
    """Clipped PPO objective with a clipped value loss (Schulman et al., 2017,
    arXiv:1707.06347, eq. 7), as torchtune 0.6.1.

    ``policy_loss = mean(max(-A * r, -A * clip(r, 1 - epsilon, 1 + epsilon)))`` with
    ``r = exp(logprobs - old_logprobs)``; ``value_loss = 0.5 * mean(max((V - R)^2,
    (clip(V, V_old - c, V_old + c) - R)^2))``; ``loss = policy_loss + value_coeff *
    value_loss``. Means are masked means where masks are given.

    Args:
        epsilon: policy ratio clipping range.
        value_clip_range: value clipping range ``c``.
        value_coeff: weight of the value loss.
    """

    def __init__(
        self, epsilon: float = 0.1, value_clip_range: float = 0.2, value_coeff: float = 0.1
    ) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.value_clip_range = value_clip_range
        self.value_coeff = value_coeff

    def forward(
        self,
        pi_old_logprobs: torch.Tensor,
        pi_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        phi_old_values: torch.Tensor,
        phi_values: torch.Tensor,
        returns: torch.Tensor,
        padding_masks: torch.Tensor | None = None,
        value_padding_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All tensors ``[b, n]`` (or any common shape); masks bool, True where the value
        counts (policy and value loss respectively).

        Returns:
            ``(loss, policy_loss, value_loss, ratios, clipfrac)``, scalars; all but ``loss``
            detached; ``ratios`` is the unmasked mean ratio.
        """
        ratios = torch.exp(pi_logprobs - pi_old_logprobs)
        clipped = torch.clamp(ratios, 1.0 - self.epsilon, 1.0 + self.epsilon)
        loss_clipped = -advantages * clipped
        loss_unclipped = -advantages * ratios
        clipfrac = (loss_clipped > loss_unclipped).to(pi_logprobs.dtype)
        policy_loss = torch.maximum(loss_clipped, loss_unclipped)
        if padding_masks is None:
            clipfrac, policy_loss = clipfrac.mean(), policy_loss.mean()
        else:
            clipfrac = masked_mean(clipfrac, padding_masks)
            policy_loss = masked_mean(policy_loss, padding_masks)

        c = self.value_clip_range
        values_clipped = torch.clamp(phi_values, phi_old_values - c, phi_old_values + c)
        value_loss = torch.maximum((phi_values - returns) ** 2, (values_clipped - returns) ** 2)
        if value_padding_masks is None:
            value_loss = 0.5 * value_loss.mean()
        else:
            value_loss = 0.5 * masked_mean(value_loss, value_padding_masks)

        loss = policy_loss + value_loss * self.value_coeff
        return (
            loss,
            policy_loss.detach(),
            value_loss.detach(),
            ratios.mean().detach(),
            clipfrac.detach(),
        )
