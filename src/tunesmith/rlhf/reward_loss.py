"""Reward-model loss: Bradley-Terry over the scalar scores of chosen and rejected responses.

``BradleyTerryLoss`` is TRL's ``RewardTrainer`` loss: ``-logsigmoid(r_chosen - r_rejected -
margin)`` averaged over pairs, plus the optional reward-centering term of Eisenstein et al.
(2023, arXiv:2312.09244), ``center_rewards_coefficient * mean((r_chosen + r_rejected) ** 2)``,
which keeps the scores near zero (the Bradley-Terry loss sees only their differences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BradleyTerryLoss", "reward_metrics"]


class BradleyTerryLoss(nn.Module):
    """Pairwise Bradley-Terry loss of a reward model.

    Args:
        center_rewards_coefficient: weight of the centering term; ``None`` (TRL's default) or 0
            leaves it out.
    """

    def __init__(self, center_rewards_coefficient: float | None = None) -> None:
        super().__init__()
        if center_rewards_coefficient is not None and center_rewards_coefficient < 0:
            raise ValueError(
                f"center_rewards_coefficient must be >= 0, got {center_rewards_coefficient}"
            )
        self.center_rewards_coefficient = center_rewards_coefficient

    def forward(
        self,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
        margin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``chosen_rewards`` / ``rejected_rewards`` ``[b]`` scores, ``margin`` ``[b]`` or
        ``None`` (how much the chosen should beat the rejected by); returns the scalar loss."""
        diff = chosen_rewards - rejected_rewards
        if margin is not None:
            diff = diff - margin.to(diff.dtype)
        loss = -F.logsigmoid(diff).mean()
        if self.center_rewards_coefficient:
            loss = loss + self.center_rewards_coefficient * torch.mean(
                (chosen_rewards + rejected_rewards) ** 2
            )
        return loss


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Sums over a micro-batch's ``[b]`` pairs, float64: ``[correct pairs (chosen > rejected),
    margin sum, chosen reward sum, rejected reward sum]`` (divide by the pair count for
    ``accuracy``, ``margin``, ``rewards/chosen``, ``rewards/rejected``)."""
    c, r = chosen_rewards.detach().double(), rejected_rewards.detach().double()
    return torch.stack([(c > r).double().sum(), (c - r).sum(), c.sum(), r.sum()])
