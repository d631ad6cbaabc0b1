"""Preference losses (DPO and kin) over per-sequence log-probabilities.

Every loss takes the summed (or, where ``average_log_probs`` is set, token-averaged) log-probs
of the chosen and rejected responses under the policy and the reference model, each ``[b]``,
and returns ``(losses [b], chosen_rewards [b], rejected_rewards [b])``: per-pair losses (the
recipe takes their mean) and the implicit rewards ``scale * (policy - reference)``, detached,
that the recipe logs. The names and arguments are torchtune's (``torchtune.rlhf.loss.*``
resolves here), so its DPO configs run unchanged. Reference-free losses (SimPO) take only the
two policy log-probs. Two losses leave the pairwise mould: ``KTOLoss`` scores unpaired
desirable/undesirable completions (``unpaired = True``), and ``ORPOLoss`` adds the chosen
responses' SFT negative log-likelihood to an odds-ratio term (``needs_nll = True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreferenceLoss", "DPOLoss", "RSOLoss", "IPOLoss", "SimPOLoss", "KTOLoss", "ORPOLoss"]


class PreferenceLoss(nn.Module):
    """Base of the pairwise preference losses the DPO recipe accepts.

    Attributes:
        average_log_probs: the loss expects token-averaged log-probs instead of sums (IPO).
        reference_free: ``forward`` takes only the policy's two log-probs (SimPO, ORPO); the
            recipe then runs no reference model.
        unpaired: the loss trains on unpaired rows with a desirable/undesirable label (KTO);
            see ``KTOLoss.forward``.
        needs_nll: ``forward`` also takes the chosen responses' mean token NLL (ORPO).
    """

    average_log_probs: bool = False
    reference_free: bool = False
    unpaired: bool = False
    needs_nll: bool = False

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


class KTOLoss(PreferenceLoss):
    """Kahneman-Tversky optimization (Ethayarajh et al., 2024, arXiv:2402.01306, eq. 7), on
    unpaired completions each labelled desirable or undesirable; TRL's ``KTOTrainer`` loss.

    With ``r = policy - reference`` summed log-prob of a row's completion and ``z`` the KL
    reference point (see ``estimate_kl``), a desirable row's loss is
    ``desirable_weight * (1 - sigmoid(beta * (r - z)))``, an undesirable one's
    ``undesirable_weight * (1 - sigmoid(beta * (z - r)))``. ``loss_type="apo_zero_unpaired"``
    is APO-zero's unpaired form (Doosterlinck et al., 2024, arXiv:2408.06266): no reference
    point, ``1 - sigmoid(beta * r)`` and ``sigmoid(beta * r)``.

    Args:
        beta: inverse temperature of the implicit reward.
        desirable_weight: weight of the desirable rows' losses (TRL: raise it when desirable
            rows are rarer, so that ``n_desirable * w_d / (n_undesirable * w_u)`` is 1 to 4/3).
        undesirable_weight: weight of the undesirable rows' losses.
        loss_type: ``"kto"`` or ``"apo_zero_unpaired"``.
    """

    unpaired = True

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        loss_type: str = "kto",
    ) -> None:
        super().__init__()
        if loss_type not in ("kto", "apo_zero_unpaired"):
            raise ValueError(f"loss_type must be 'kto' or 'apo_zero_unpaired', got {loss_type!r}")
        if desirable_weight < 0 or undesirable_weight < 0:
            raise ValueError("desirable_weight and undesirable_weight must be >= 0")
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.loss_type = loss_type

    @property
    def uses_kl(self) -> bool:
        """Whether ``forward`` needs the KL reference point (``loss_type="kto"``)."""
        return self.loss_type == "kto"

    @staticmethod
    def estimate_kl(
        policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor
    ) -> torch.Tensor:
        """KTO's reference point from mismatched pairs (row ``i``'s prompt with another row's
        completion; the recipe, like TRL, rotates completions by one within the batch): the
        mean of ``policy - reference`` over the ``[b]`` rows, detached, clamped at 0. Under
        data parallelism the recipe averages the per-rank means before clamping (TRL's
        ``gather_for_metrics(kl).mean().clamp(min=0)``); returns a scalar."""
        return (policy_kl_logps - reference_kl_logps).mean().detach().clamp(min=0)

    def forward(
        self,
        policy_logps: torch.Tensor,
        reference_logps: torch.Tensor,
        desirable: torch.Tensor,
        kl: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``policy_logps`` / ``reference_logps`` ``[b]`` summed completion log-probs,
        ``desirable`` ``[b]`` bool labels, ``kl`` the scalar reference point (``estimate_kl``;
        required for ``loss_type="kto"``, ignored otherwise).

        Returns ``(losses [b] weighted, in row order — the loss is their mean, as TRL's;
        chosen_rewards [n_desirable], rejected_rewards [n_undesirable])``, rewards being
        ``beta * (policy - reference)``, detached.
        """
        desirable = desirable.to(torch.bool)
        r = policy_logps - reference_logps
        if self.loss_type == "kto":
            if kl is None:
                raise ValueError("KTOLoss(loss_type='kto') needs the KL reference point `kl`")
            z = kl.to(r.dtype)
            good = 1 - torch.sigmoid(self.beta * (r - z))
            bad = 1 - torch.sigmoid(self.beta * (z - r))
        else:
            good = 1 - torch.sigmoid(self.beta * r)
            bad = torch.sigmoid(self.beta * r)
        losses = torch.where(desirable, self.desirable_weight * good, self.undesirable_weight * bad)
        rewards = self.beta * r.detach()
        return losses, rewards[desirable], rewards[~desirable]


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, branching at ``-log 2`` (Maechler, 2012)."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


class ORPOLoss(PreferenceLoss):
    """Odds-ratio preference optimization (Hong et al., 2024, arXiv:2403.07691): reference-free,
    the chosen responses' SFT loss plus ``beta`` times the odds-ratio loss; TRL's
    ``ORPOTrainer`` (its ``beta`` is the paper's lambda).

    On token-mean log-probs ``c`` and ``r`` (``average_log_probs``), the log odds ratio is
    ``(c - r) - (log(1 - e^c) - log(1 - e^r))`` and a pair's loss is
    ``nll - beta * logsigmoid(log_odds)``, where ``nll`` is the chosen responses' token-mean
    negative log-likelihood over the micro-batch (one scalar), so the mean over pairs equals
    TRL's ``nll_loss - mean(beta * logsigmoid(log_odds))``. The recipe's NLL covers the chosen
    response's trained tokens (TRL's also counts the prompt tokens).

    Args:
        beta: weight of the odds-ratio term (the paper's lambda, TRL's default 0.1).
    """

    average_log_probs = True
    reference_free = True
    needs_nll = True

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = beta

    def log_odds(
        self, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor
    ) -> torch.Tensor:
        """``[b]`` log odds of the chosen over the rejected response (fp32 or wider)."""
        dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)
        c, r = policy_chosen_logps.to(dtype), policy_rejected_logps.to(dtype)
        return (c - r) - (_log1mexp(c) - _log1mexp(r))

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        chosen_nll: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token-mean log-probs ``[b]`` each (all < 0) and the chosen NLL (a scalar, or
        ``[b]``); returns ``(losses [b], chosen_rewards [b], rejected_rewards [b])`` with
        rewards ``beta * mean log-prob``, detached."""
        ratio = F.logsigmoid(self.log_odds(policy_chosen_logps, policy_rejected_logps))
        losses = chosen_nll - self.beta * ratio
        chosen = self.beta * policy_chosen_logps.detach()
        return losses, chosen, self.beta * policy_rejected_logps.detach()
