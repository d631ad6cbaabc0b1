"""Preference losses (DPO and kin) over per-sequence log-probabilities.

Every loss takes the summed (or, where ``average_log_probs`` is set, token-averaged) log-probs
of the chosen and rejected responses under the policy and the reference model, each ``[b]``,
and returns ``(losses [b], chosen_rewards [b], rejected_rewards [b])``: per-pair losses (the
recipe takes their mean) and the implicit rewards ``scale * (policy - reference)``, detached,
that the recipe logs. The names and arguments are torchtune's (``torchtune.rlhf.loss.*``
resolves here), so its DPO configs run unchanged. Reference-free losses (SimPO) take only the
two policy log-probs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreferenceLoss", "DPOLoss", "RSOLoss", "IPOLoss", "SimPOLoss"]


class PreferenceLoss(nn.Module):
    """Base of the pairwise preference losses the DPO recipe accepts.

    Attributes:
        average_log_probs: the loss expects token-averaged log-probs instead of sums (IPO).
        reference_free: ``forward`` takes only the policy's two log-probs (SimPO); the
            recipe then runs no reference model.
    """

    average_log_probs: bool = False
    reference_free: bool = False

    def _margins(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h [b], chosen log-ratio [b], rejected log-ratio [b])`` where ``h`` is the policy's
        chosen-minus-rejected log-ratio minus the reference's (0 for the initial policy)."""
        chosen = policy_chosen_logps - reference_chosen_logps
        rejected = policy_rejected_logps - reference_rejected_logps
        return chosen - rejected, chosen, rejected


class DPOLoss(PreferenceLoss):
    """Direct Preference Optimization (Rafailov et al., 2023, arXiv:2305.18290).

    ``loss = -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)``, where ``h`` is
    the chosen-minus-rejected log-ratio of policy over reference; ``eps = label_smoothing`` is
    conservative DPO (the labels are assumed flipped with probability ``eps``). The loss
    starts at ``log 2`` when the policy equals the reference.

    Args:
        beta: inverse temperature of the implicit reward, typically 0.1 to 0.5.
        label_smoothing: probability that a preference label is wrong, in ``[0, 0.5)``.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = beta
        self.label_smoothing = label_smoothing

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All inputs ``[b]``; returns ``(losses [b], chosen_rewards [b], rejected_rewards [b])``."""
        h, chosen, rejected = self._margins(
            policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
            reference_rejected_logps,
        )  # fmt: skip
        eps = self.label_smoothing
        losses = -F.logsigmoid(self.beta * h) * (1 - eps) - F.logsigmoid(-self.beta * h) * eps
        return losses, self.beta * chosen.detach(), self.beta * rejected.detach()


class RSOLoss(PreferenceLoss):
    """Hinge loss of statistical rejection sampling optimization (Liu et al., 2023,
    arXiv:2309.06657; SLiC's hinge on DPO's log-ratio): ``relu(1 - gamma * h)``.

    Args:
        gamma: inverse temperature, as DPO's ``beta``.
    """

    def __init__(self, gamma: float = 0.1) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All inputs ``[b]``; returns ``(losses [b], chosen_rewards [b], rejected_rewards [b])``."""
        h, chosen, rejected = self._margins(
            policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
            reference_rejected_logps,
        )  # fmt: skip
        losses = torch.relu(1 - self.gamma * h)
        return losses, self.gamma * chosen.detach(), self.gamma * rejected.detach()


class IPOLoss(PreferenceLoss):
    """Identity preference optimization (Azar et al., 2023, arXiv:2310.12036, eq. 17):
    ``(h - 1 / (2 * tau)) ** 2``, a squared loss that keeps regularising when the preferences
    are deterministic (DPO's sigmoid would push ``h`` to infinity).

    Uses token-averaged log-probs (``average_log_probs = True``), as TRL's ``ipo`` loss does, so
    ``tau`` means the same for short and long responses.

    Args:
        tau: regularisation strength (larger = weaker pull towards the reference).
    """

    average_log_probs = True

    def __init__(self, tau: float = 0.1) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All inputs ``[b]`` (token means); returns ``(losses, chosen_rewards,
        rejected_rewards)``, each ``[b]``; rewards are ``tau * log-ratio``."""
        h, chosen, rejected = self._margins(
            policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
            reference_rejected_logps,
        )  # fmt: skip
        losses = (h - 1 / (2 * self.tau)) ** 2
        return losses, self.tau * chosen.detach(), self.tau * rejected.detach()


class SimPOLoss(PreferenceLoss):
    """Simple preference optimization (Meng et al., 2024, arXiv:2405.14734): reference-free,
    on token-averaged log-probs, with a target reward margin ``gamma``:
    ``-(1 - eps) * logsigmoid(beta * d - gamma) - eps * logsigmoid(gamma - beta * d)`` where
    ``d`` is the chosen-minus-rejected mean log-prob. torchtune 0.3's arguments.

    Args:
        beta: reward scale (the paper uses 2.0 to 2.5).
        gamma: target margin between the chosen and rejected rewards.
        label_smoothing: probability that a preference label is wrong, in ``[0, 0.5)``.
    """

    average_log_probs = True
    reference_free = True

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = beta
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(
        self, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token-mean log-probs ``[b]`` each; returns ``(losses [b], chosen_rewards [b],
        rejected_rewards [b])`` with rewards ``beta * mean log-prob``."""
        z = self.beta * (policy_chosen_logps - policy_rejected_logps) - self.gamma
        eps = self.label_smoothing
        losses = -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps
        chosen = self.beta * policy_chosen_logps.detach()
        return losses, chosen, self.beta * policy_rejected_logps.detach()
