"""GRPO: group-relative advantages and the clipped policy loss with its variants.

:func:`group_advantages` and :class:`GRPOPolicyLoss` reproduce TRL's ``GRPOTrainer``
(advantages with ``scale_rewards`` ``group | batch | none``; ``loss_type`` ``grpo``,
``dr_grpo``, ``dapo``, ``bnpo`` and GSPO's sequence-level importance ratio; the k3 KL estimator
to a reference), number for number on the same inputs. torchtune's dev GRPO losses
(``torchtune.dev.grpo.loss.*``, ``torchtune.dev.rl.linear_grpo_loss.LinearGRPOLoss``) live in
:mod:`tunesmith.rlhf.grpo_torchtune` and are re-exported here.

Shapes: ``b`` completions (prompts x group size, a prompt's completions contiguous), ``n``
completion length.

Gradient accumulation: ``grpo``/``bnpo``/``dr_grpo`` return the mean over the micro-batch they
see, so a recipe accumulating ``k`` micro-batches divides each loss by ``k``; ``dapo`` divides
the token sum by ``num_items`` (the number of completion tokens in the whole accumulated batch,
divided by the number of data-parallel ranks whose gradients are averaged) and is summed over
micro-batches as is. That is what TRL does.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = [
    "LOSS_TYPES",
    "GRPOPolicyLoss",
    "group_advantages",
    "GRPOLoss",
    "GRPOCompletionLoss",
    "GRPOSimpleLoss",
    "GRPOWithChunkedOutputLoss",
    "LinearGRPOLoss",
]

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "gspo")
"""Accepted ``loss_type`` values; ``gspo`` is ``grpo`` with sequence-level importance ratios."""
SCALES = ("group", "batch", "none")

RewardScale = Literal["group", "batch", "none"]


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaNs (NaN where fewer than two values)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim)
    sq = torch.nansum((x - mean) ** 2, dim=dim)
    var = torch.where(count > 1, sq / (count - 1).clamp(min=1), torch.full_like(sq, float("nan")))
    return var.sqrt()


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: RewardScale = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages: each reward minus its group's mean, divided by a std + eps.

    Args:
        rewards: ``[b]`` total reward per completion, ``b = prompts * group_size``, a prompt's
            completions contiguous. NaN marks an unscorable completion: it is left out of its
            group's mean and std and gets advantage 0 (as TRL).
        group_size: completions per prompt.
        scale: ``"group"`` divides by the group's std (GRPO), ``"batch"`` by the std of all
            ``b`` rewards (as PPO-lite), ``"none"`` does not divide (Dr. GRPO).
        eps: added to the std.

    Returns:
        ``[b]`` advantages, the dtype of ``rewards``.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    if group_size < 1 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries; "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    advantages = rewards - mean
    if scale == "group":
        std = _nanstd(grouped, dim=1).repeat_interleave(group_size)
        std = std if group_size > 1 else torch.zeros_like(std)
        advantages = advantages / (std + eps)
    elif scale == "batch":
        std = _nanstd(rewards) if rewards.numel() > 1 else rewards.new_zeros(())
        advantages = advantages / (std + eps)
    return torch.nan_to_num(advantages, nan=0.0)


class GRPOPolicyLoss(nn.Module):
    """The GRPO family's clipped surrogate loss with an optional KL penalty, as TRL 1.16.

    Per token, with ``r = exp(logprobs - old_logprobs)`` (``importance_sampling_level=
    "sequence"``, GSPO: ``r = exp(mean over the sequence's tokens of the log-ratio)``, one per
    sequence) and advantage ``A`` of the sequence:
    ``l = -min(r * A, clip(r, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl`` with TRL's k3
    estimator ``kl = exp(ref - logprobs) - (ref - logprobs) - 1`` (times ``r`` with
    ``use_bias_correction_kl``, TRL's default). The token losses are then reduced by
    ``loss_type``: ``grpo`` / ``gspo`` mean over each sequence's tokens then over sequences;
    ``bnpo`` mean over all tokens of the micro-batch; ``dr_grpo`` sum over tokens divided by
    ``b * max_completion_length``; ``dapo`` sum over tokens divided by ``num_items``.

    Args:
        loss_type: one of :data:`LOSS_TYPES`.
        epsilon: lower clipping range (and the upper one when ``epsilon_high`` is None).
        epsilon_high: upper clipping range (DAPO's clip-higher), default ``epsilon``.
        beta: KL coefficient; 0 needs no reference log-probs.
        max_completion_length: ``dr_grpo``'s constant (default: the ``n`` of the inputs).
        importance_sampling_level: ``"token"`` or ``"sequence"``; ``loss_type="gspo"``
            implies ``"sequence"``.
        use_bias_correction_kl: multiply the KL term by the importance ratio (TRL's default).
        delta: two-sided clipping: cap the unclipped ratio at ``delta`` (TRL's ``delta``).
    """

    def __init__(
        self,
        loss_type: str = "grpo",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.04,
        max_completion_length: int | None = None,
        importance_sampling_level: str = "token",
        use_bias_correction_kl: bool = True,
        delta: float | None = None,
    ) -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
        if importance_sampling_level not in ("token", "sequence"):
            raise ValueError(
                "importance_sampling_level must be 'token' or 'sequence'; "
                f"got {importance_sampling_level!r}"
            )
        if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
            raise ValueError("epsilon and epsilon_high must be >= 0")
        self.loss_type = loss_type
        self.epsilon_low = float(epsilon)
        self.epsilon_high = float(epsilon if epsilon_high is None else epsilon_high)
        self.beta = float(beta)
        self.max_completion_length = max_completion_length
        self.importance_sampling_level = (
            "sequence" if loss_type == "gspo" else importance_sampling_level
        )
        self.use_bias_correction_kl = use_bias_correction_kl
        self.delta = delta

    def forward(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor | None,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        *,
        num_items: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch.

        Args:
            logprobs: ``[b, n]`` current policy log-probs of the completion tokens (grad flows).
            old_logprobs: ``[b, n]`` log-probs at sampling time; None = ``logprobs.detach()``
                (one optimisation pass per rollout).
            ref_logprobs: ``[b, n]`` reference log-probs; needed when ``beta != 0``.
            advantages: ``[b]`` (or ``[b, n]`` per token).
            mask: ``[b, n]`` bool, True at completion tokens that count.
            num_items: ``dapo``'s normaliser (see the module docstring); default: the number
                of True positions in ``mask``.

        Returns:
            ``(loss, metrics)``: the scalar loss and detached scalar metrics ``policy_loss``
            (the loss without the KL term), ``kl`` (token mean of the KL term, only when
            ``beta != 0``), ``ratio`` (mean importance ratio), ``clip_ratio/low``,
            ``clip_ratio/high``, ``clip_ratio/region`` (fractions of tokens, or of sequences at
            the sequence level, whose ratio is clipped below / above / either, where that
            clipping is active for the advantage's sign).
        """
        self._check_shapes(logprobs, old_logprobs, ref_logprobs, advantages, mask)
        if old_logprobs is None:
            old_logprobs = logprobs.detach()
        if self.beta != 0.0 and ref_logprobs is None:
            raise ValueError("ref_logprobs are needed when beta != 0")
        maskf = mask.to(logprobs.dtype)
        adv = advantages[:, None] if advantages.dim() == 1 else advantages
        adv = adv.to(logprobs.dtype)
        log_ratio = logprobs - old_logprobs
        if self.importance_sampling_level == "sequence":
            seq = (log_ratio * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)
            log_ratio = seq[:, None]
        ratio = torch.exp(log_ratio)  # [b, n] or [b, 1]
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        unclipped = ratio if self.delta is None else torch.clamp(ratio, max=self.delta)
        token_loss = -torch.min(unclipped * adv, clipped * adv)
        policy_token_loss = token_loss
        per_token_kl = None
        if self.beta != 0.0:
            diff = ref_logprobs - logprobs
            per_token_kl = torch.exp(diff) - diff - 1
            if self.use_bias_correction_kl:
                per_token_kl = per_token_kl * ratio
            token_loss = token_loss + self.beta * per_token_kl

        loss = self._reduce(token_loss, maskf, num_items)
        with torch.no_grad():
            metrics = {"policy_loss": self._reduce(policy_token_loss, maskf, num_items)}
            if per_token_kl is not None:
                metrics["kl"] = self._mean(per_token_kl, maskf)
            metrics["ratio"] = self._mean(ratio, maskf)
            low = ((ratio < 1 - self.epsilon_low) & (adv < 0)).to(logprobs.dtype)
            high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).to(logprobs.dtype)
            metrics["clip_ratio/low"] = self._mean(low, maskf)
            metrics["clip_ratio/high"] = self._mean(high, maskf)
            metrics["clip_ratio/region"] = self._mean(torch.maximum(low, high), maskf)
        return loss, {k: v.detach() for k, v in metrics.items()}

    @staticmethod
    def _check_shapes(logprobs, old_logprobs, ref_logprobs, advantages, mask) -> None:
        want = tuple(logprobs.shape)
        named = {"old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs, "mask": mask}
        for name, t in named.items():
            if t is not None and tuple(t.shape) != want:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; logprobs has {want}")
        if tuple(advantages.shape) not in (want[:1], want):
            raise ValueError(
                f"advantages must be [b] or [b, n] = {want[:1]} or {want}; "
                f"got {tuple(advantages.shape)}"
            )

    @staticmethod
    def _mean(x: torch.Tensor, maskf: torch.Tensor) -> torch.Tensor:
        """Token mean over ``maskf``; a ``[b, 1]`` (sequence-level) tensor: mean over rows."""
        if x.shape[-1] == 1 and maskf.shape[-1] != 1:
            return x.mean()
        x = x.expand_as(maskf)
        return (x * maskf).sum() / maskf.sum().clamp(min=1.0)

    def _reduce(
        self, token_loss: torch.Tensor, maskf: torch.Tensor, num_items: torch.Tensor | float | None
    ) -> torch.Tensor:
        masked = token_loss * maskf  # broadcasts a [b, 1] sequence-level loss over tokens
        if self.loss_type in ("grpo", "gspo"):
            return (masked.sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
        if self.loss_type == "bnpo":
            return masked.sum() / maskf.sum().clamp(min=1.0)
        if self.loss_type == "dr_grpo":
            length = self.max_completion_length or maskf.shape[-1]
            return masked.sum() / (maskf.shape[0] * length)
        # dapo
        if num_items is None:
            num_items = maskf.sum()
        denom = torch.as_tensor(num_items, dtype=maskf.dtype, device=maskf.device)
        return masked.sum() / denom.clamp(min=1.0)


from tunesmith.rlhf.grpo_torchtune import (  # noqa: E402  (torchtune's names, re-exported)
    GRPOCompletionLoss,
    GRPOLoss,
    GRPOSimpleLoss,
    GRPOWithChunkedOutputLoss,
    LinearGRPOLoss,
)
