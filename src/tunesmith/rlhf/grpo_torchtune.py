"""torchtune main's dev GRPO losses, with its names, arguments, return tuples and numbers.

``torchtune.dev.grpo.loss.{GRPOLoss, GRPOCompletionLoss, GRPOSimpleLoss,
GRPOWithChunkedOutputLoss}`` and ``torchtune.dev.rl.linear_grpo_loss.LinearGRPOLoss`` resolve
here (also re-exported from :mod:`tunesmith.rlhf.grpo`), so torchtune's GRPO configs and
recipe code run unchanged. Every ``forward`` takes ``(pi_old, pi, ref, advantages,
padding_masks)`` in torchtune's order (note: the *old* log-probs first) and returns
``(loss, policy_loss, kl_loss, ratios, clipfrac)`` (the chunked ones also ``pi_logprobs``),
where ``padding_masks [b, n]`` is True at tokens that count. ``policy_loss`` is torchtune's
objective (higher is better); ``loss = -(policy_loss - kl_coeff * kl_loss)``.

For new configs prefer :class:`tunesmith.rlhf.grpo.GRPOPolicyLoss` (TRL's variants).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.rlhf.ppo import masked_mean, masked_sum

__all__ = [
    "GRPOLoss",
    "GRPOCompletionLoss",
    "GRPOSimpleLoss",
    "GRPOWithChunkedOutputLoss",
    "LinearGRPOLoss",
]

_Out5 = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _k3(ref: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per element: ``exp(ref - pi) - (ref - pi) - 1``."""
    return torch.exp(ref - pi) - (ref - pi) - 1


def _mask(padding_masks: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like, dtype=torch.bool) if padding_masks is None else padding_masks


class _TorchtuneGRPO(nn.Module):
    def __init__(self, epsilon: float = 0.1, kl_coeff: float = 0.1) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.kl_coeff = kl_coeff


class GRPOLoss(_TorchtuneGRPO):
    """Token-level clipped GRPO (Shao et al., 2024, arXiv:2402.03300) as torchtune's
    ``GRPOLoss``: ratios per token, clipped to ``1 +- epsilon``, masked means over all tokens of
    the batch.

    Args:
        epsilon: clipping range.
        kl_coeff: KL coefficient (beta).
    """

    def forward(
        self,
        pi_old_logprobs: torch.Tensor,
        pi_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        padding_masks: torch.Tensor | None = None,
    ) -> _Out5:
        """Log-probs ``[b, n]``, advantages ``[b]``, masks ``[b, n]`` bool (True = counts).
        Returns ``(loss, policy_loss, kl_loss, mean ratio, clipfrac)``, scalars."""
        mask = _mask(padding_masks, pi_logprobs)
        ratios = torch.exp(pi_logprobs - pi_old_logprobs)
        clipped = torch.clamp(ratios, 1.0 - self.epsilon, 1.0 + self.epsilon)
        adv = advantages[:, None]
        obj_clipped, obj_unclipped = adv * clipped, adv * ratios
        clipfrac = masked_mean((obj_clipped < obj_unclipped).float(), mask)
        policy_loss = masked_mean(torch.minimum(obj_clipped, obj_unclipped), mask)
        kl_loss = masked_mean(_k3(ref_logprobs, pi_logprobs), mask)
        loss = -(policy_loss - self.kl_coeff * kl_loss)
        return (
            loss,
            policy_loss.detach(),
            kl_loss.detach(),
            ratios.mean().detach(),
            clipfrac.detach(),
        )


class GRPOCompletionLoss(_TorchtuneGRPO):
    """GRPO with one ratio per completion (summed log-probs), as torchtune's
    ``GRPOCompletionLoss``. Same arguments and returns as :class:`GRPOLoss`. One deviation:
    ``kl_loss`` is the mean over completions of their k3 KL (torchtune's reduction is only
    defined when the batch size equals the completion length)."""

    def forward(
        self,
        pi_old_logprobs: torch.Tensor,
        pi_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        padding_masks: torch.Tensor | None = None,
    ) -> _Out5:
        """Log-probs ``[b, n]``, advantages ``[b]``, masks ``[b, n]``; scalar returns."""
        mask = _mask(padding_masks, pi_logprobs)
        old, pi, ref = (
            masked_sum(t, mask, dim=-1) for t in (pi_old_logprobs, pi_logprobs, ref_logprobs)
        )
        ratios = torch.exp(pi - old)
        clipped = torch.clamp(ratios, 1.0 - self.epsilon, 1.0 + self.epsilon)
        obj_clipped, obj_unclipped = advantages * clipped, advantages * ratios
        clipfrac = (obj_clipped < obj_unclipped).float().mean()
        policy_loss = torch.minimum(obj_clipped, obj_unclipped).mean()
        # torchtune's masked mean of this [b] KL with the [b, n] mask broadcasts the KL along
        # the token axis and fails unless b == n; here: the mean over completions.
        kl_loss = _k3(ref, pi).mean()
        loss = -(policy_loss - self.kl_coeff * kl_loss)
        return (
            loss,
            policy_loss.detach(),
            kl_loss.detach(),
            ratios.mean().detach(),
            clipfrac.detach(),
        )


class GRPOSimpleLoss(_TorchtuneGRPO):
    """torchtune's ``GRPOSimpleLoss`` (TRL's early one-step GRPO): ratio ``exp(pi -
    pi.detach())`` (value 1, gradient of ``pi``), per-sequence token means then the batch mean.
    ``pi_old_logprobs`` is unused; ``ref_logprobs`` enters only through the KL term. No
    clipping: returns ``ratios = 1`` and ``clipfrac = 0``. Arguments as :class:`GRPOLoss`."""

    def forward(
        self,
        pi_old_logprobs: torch.Tensor,
        pi_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        padding_masks: torch.Tensor | None = None,
    ) -> _Out5:
        """Log-probs ``[b, n]``, advantages ``[b]``, masks ``[b, n]``; scalar returns."""
        mask = _mask(padding_masks, pi_logprobs)
        per_token_kl = _k3(ref_logprobs.detach(), pi_logprobs)
        per_token_policy = torch.exp(pi_logprobs - pi_logprobs.detach()) * advantages[:, None]
        per_token_loss = -(per_token_policy - self.kl_coeff * per_token_kl)
        loss = masked_mean(per_token_loss, mask, dim=1).mean()
        policy_loss = masked_mean(per_token_policy, mask, dim=1).mean().detach()
        kl_loss = masked_mean(per_token_kl, mask, dim=1).mean().detach()
        return loss, policy_loss, kl_loss, torch.tensor(1.0), torch.tensor(0.0)


def _simple_chunk(
    logits: torch.Tensor, targets: torch.Tensor, ref: torch.Tensor, advantages: torch.Tensor,
    kl_coeff: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-token (loss, policy objective, kl, log-probs) of one chunk ``[b, c]`` from its
    logits ``[b, c, v]`` (upcast to fp32), as :class:`GRPOSimpleLoss`."""
    logprobs = -F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
    ).view_as(targets)
    kl = _k3(ref.detach(), logprobs)
    policy = torch.exp(logprobs - logprobs.detach()) * advantages[:, None]
    return -(policy - kl_coeff * kl), policy, kl, logprobs


def _accumulate_chunks(
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    masks: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, ...]:
    """torchtune's reduction: per-sequence sums over chunks / token counts, batch mean."""
    b = chunks[0][0].shape[0]
    device = chunks[0][0].device
    loss_sum = torch.zeros(b, device=device)
    policy_sum = torch.zeros(b, device=device)
    kl_sum = torch.zeros(b, device=device)
    count = torch.zeros(b, device=device)
    for (loss, policy, kl, _), mask in zip(chunks, masks, strict=True):
        loss_sum = loss_sum + (loss * mask).sum(dim=1)
        with torch.no_grad():
            policy_sum += (policy * mask).sum(dim=1)
            kl_sum += (kl * mask).sum(dim=1)
            count += mask.sum(dim=1)
    count = count.clamp(min=1e-9)
    loss = (loss_sum / count).mean()
    with torch.no_grad():
        policy_loss = (policy_sum / count).mean()
        kl_loss = (kl_sum / count).mean()
    pi_logprobs = torch.cat([c[3] for c in chunks], dim=1)
    return (loss, policy_loss, kl_loss, torch.tensor(1.0, device=device),
            torch.tensor(0.0, device=device), pi_logprobs)  # fmt: skip


class GRPOWithChunkedOutputLoss(nn.Module):
    """:class:`GRPOSimpleLoss` computed from the policy's logits a chunk at a time (one
    fp32 upcast per chunk), as torchtune's ``GRPOWithChunkedOutputLoss``.

    Args:
        num_output_chunks: chunks the model's output is split into (informational; the number
            of chunks is that of the ``pi_logits`` list).
        epsilon: unused (no clipping), kept for torchtune's signature.
        kl_coeff: KL coefficient.
    """

    def __init__(self, num_output_chunks: int = 8, epsilon: float = 0.1, kl_coeff: float = 0.1):
        super().__init__()
        self.num_output_chunks = num_output_chunks
        self.epsilon = epsilon
        self.kl_coeff = kl_coeff

    def forward(
        self,
        pi_logits: torch.Tensor | list[torch.Tensor],
        targets: torch.Tensor,
        ref_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        padding_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Args: ``pi_logits [b, n, v]`` or a list of chunks ``[b, c_i, v]`` along ``n``;
        ``targets [b, n]`` long; ``ref_logprobs [b, n]``; ``advantages [b]``;
        ``padding_masks [b, n]`` bool (True = counts).

        Returns ``(loss, policy_loss, kl_loss, ratios=1, clipfrac=0, pi_logprobs [b, n])``."""
        if isinstance(pi_logits, torch.Tensor):
            pi_logits = [pi_logits]
        k = len(pi_logits)
        masks = _mask(padding_masks, targets).chunk(k, dim=1)
        chunks = [
            _simple_chunk(lg, t, r, advantages, self.kl_coeff)
            for lg, t, r in zip(pi_logits, targets.chunk(k, dim=1), ref_logprobs.chunk(k, dim=1),
                                strict=True)
        ]  # fmt: skip
        return _accumulate_chunks(chunks, masks)


class LinearGRPOLoss(nn.Module):
    """:class:`GRPOWithChunkedOutputLoss` that also does the output projection a chunk at a
    time, from the model's hidden states (torchtune's ``LinearGRPOLoss``). Call
    :meth:`set_model_output` with the policy first: it makes the model return hidden states.

    Args:
        num_output_chunks: chunks along the sequence.
        epsilon: unused (no clipping).
        kl_coeff: KL coefficient.
        ignore_index: kept for torchtune's signature (targets are response tokens).
        mask_pre_projection: kept for torchtune's signature.
    """

    def __init__(
        self,
        num_output_chunks: int = 8,
        epsilon: float = 0.1,
        kl_coeff: float = 0.1,
        ignore_index: int = -100,
        mask_pre_projection: bool = True,
    ) -> None:
        super().__init__()
        self.linear_projection: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.num_output_chunks = num_output_chunks
        self.epsilon = epsilon
        self.kl_coeff = kl_coeff
        self.ignore_index = ignore_index
        self.mask_pre_projection = mask_pre_projection

    def set_model_output(self, model: nn.Module) -> None:
        """Take ``model.output`` as the projection and make the model return hidden states."""
        if not hasattr(model, "output"):
            raise ValueError(f"LinearGRPOLoss needs a decoder with an `output` projection; "
                             f"{type(model).__name__} has none")  # fmt: skip
        model.skip_output_layer = True
        self.linear_projection = model.output

    def apply_compile_strategy(self, *args, **kwargs) -> LinearGRPOLoss:
        """Compile the per-chunk computation only (torchtune's hook)."""
        self.chunked_grpo_loss = torch.compile(self.chunked_grpo_loss, *args, **kwargs)
        return self

    def chunked_grpo_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, ref: torch.Tensor,
        advantages: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """One chunk: hidden ``[b, c, d]`` -> per-token (loss, policy, kl, log-probs) ``[b, c]``."""
        if self.linear_projection is None:
            raise RuntimeError("LinearGRPOLoss.set_model_output(model) was not called")
        return _simple_chunk(self.linear_projection(hidden), targets, ref, advantages,
                             self.kl_coeff)  # fmt: skip

    def forward(
        self,
        pi_old_outputs: torch.Tensor,
        pi_outputs: torch.Tensor,
        ref_outputs: torch.Tensor,
        advantages: torch.Tensor,
        padding_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """torchtune's (misnamed) arguments: ``pi_old_outputs`` the policy's hidden states
        ``[b, n, d]``, ``pi_outputs`` the target tokens ``[b, n]``, ``ref_outputs`` the
        reference log-probs ``[b, n]``, ``advantages [b]``, ``padding_masks [b, n]``.

        Returns ``(loss, policy_loss, kl_loss, ratios=1, clipfrac=0, pi_logprobs [b, n])``."""
        k = self.num_output_chunks
        masks = _mask(padding_masks, pi_outputs).tensor_split(k, dim=1)
        chunks = [
            self.chunked_grpo_loss(h, t, r, advantages)
            for h, t, r in zip(pi_old_outputs.tensor_split(k, dim=1),
                               pi_outputs.tensor_split(k, dim=1),
                               ref_outputs.tensor_split(k, dim=1), strict=True)
        ]  # fmt: skip
        return _accumulate_chunks(chunks, masks)
