"""One micro-batch of preference optimization, shared by the ``dpo`` recipe's losses: the
policy (and reference) log-probs, the loss, and the metric sums.

``PreferenceStep(loss_fn, ...)`` handles the three shapes of preference loss:

* pairwise (DPO, RSO, IPO, SimPO): batches ``(input_ids [2b, s], labels [2b, s])``, chosen
  rows first (``padded_collate_dpo``);
* ORPO (``needs_nll``): the same pairs, reference-free, plus the chosen responses' token-mean
  NLL;
* KTO (``unpaired``): batches ``(input_ids [r, s], labels [r, s], desirable [b])`` from
  ``padded_collate_kto``: ``b`` unpaired rows, then (``r = 2b``) their mismatched KL rows.

Image + text pairs (pairwise losses) come as dicts ``{"tokens" [2b, s], "labels" [2b, s],
"encoder_input", ...}`` (``padded_collate_vision_dpo``); every key but the labels goes to
the policy's and the reference's forward, as the finetune recipe passes it.

Metrics are kept as ``(sum, count)`` per name in one float64 vector (``[2 * len(names) + 1]``,
trained tokens last), so one all-reduce of the sums gives the step's means on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.peft import disable_adapter
from tunesmith.rlhf import sequence_log_probs
from tunesmith.rlhf.loss import KTOLoss, ORPOLoss, PreferenceLoss
from tunesmith.training.distributed import reduce_metrics
from tunesmith.training.precision import compute_context

__all__ = ["IGNORE_INDEX", "PreferenceStep", "sequence_sums"]

IGNORE_INDEX = -100
PAIR_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                "rewards/margins", "log_probs/chosen", "log_probs/rejected")  # fmt: skip
ORPO_METRICS = (*PAIR_METRICS, "nll_loss", "log_odds_ratio", "log_odds_chosen")
KTO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "log_probs/chosen",
               "log_probs/rejected", "kl")  # fmt: skip


def sequence_sums(
    model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, **inputs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums [r], counts [r])``: each row's summed log-prob of its trained targets
    (``[r, s]``, ``IGNORE_INDEX`` elsewhere) and how many there are. ``inputs``: the forward's
    other arguments (a vision model's ``encoder_input``, ``encoder_mask``, ``input_pos``)."""
    # hidden [r, s, d] with skip_output_layer, else logits [r, s, vocab]
    out = model(tokens, **inputs)
    project: Callable[[torch.Tensor], torch.Tensor] = (
        partial(_project, model) if getattr(model, "skip_output_layer", False) else _identity
    )
    return sequence_log_probs(out, targets, project, IGNORE_INDEX)


def _project(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The decoder's output layer, logit divisor (Granite) and soft-cap on ``[n, d]`` hidden
    states."""
    logits = model.output(hidden)
    divisor = getattr(model, "logits_divisor", None)
    if divisor is not None:
        logits = logits / divisor
    cap = getattr(model, "final_logit_softcap", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _identity(logits: torch.Tensor) -> torch.Tensor:
    return logits


def _pairs(values: list[torch.Tensor], counts: list[torch.Tensor | int]) -> list[torch.Tensor]:
    """``[sum_0, count_0, sum_1, count_1, ...]`` as float64 scalars."""
    out = []
    for v, n in zip(values, counts):
        out += [v.detach().double().sum(), torch.as_tensor(n, dtype=torch.float64)]
    return out


class PreferenceStep:
    """Forward passes, loss and metric sums of one micro-batch.

    Args:
        loss_fn: the preference loss.
        model: the policy.
        reference: a frozen reference model, or None (LoRA: the policy with its adapters off;
            reference-free losses run none).
        dtype / device: the compute dtype and device of the reference pass.
        activations_ctx: the policy forward's context (autocast, activation offloading).
        world_size: ranks (KTO averages its KL estimate over them).
    """

    def __init__(
        self,
        loss_fn: PreferenceLoss,
        model: nn.Module,
        reference: nn.Module | None,
        *,
        dtype: torch.dtype,
        device: torch.device,
        activations_ctx: AbstractContextManager,
        world_size: int = 1,
    ) -> None:
        self.loss_fn, self.model, self.reference = loss_fn, model, reference
        self.dtype, self.device, self.world_size = dtype, device, world_size
        self.activations_ctx = activations_ctx
        if isinstance(loss_fn, KTOLoss):
            self.names: tuple[str, ...] = KTO_METRICS
        elif isinstance(loss_fn, ORPOLoss):
            self.names = ORPO_METRICS
        else:
            self.names = PAIR_METRICS

    def zeros(self) -> torch.Tensor:
        """An empty metric-sum vector ``[2 * len(names) + 1]`` float64."""
        return torch.zeros(2 * len(self.names) + 1, device=self.device, dtype=torch.float64)

    def means(self, sums: torch.Tensor) -> dict[str, float]:
        """``{name: sum / count}`` from (reduced) sums; names with no count are left out, and
        KTO's ``rewards/margins`` is the difference of the two reward means."""
        values = sums[:-1].view(-1, 2).tolist()
        out = {k: s / n for k, (s, n) in zip(self.names, values) if n > 0}
        if self.loss_fn.unpaired and "rewards/chosen" in out and "rewards/rejected" in out:
            out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out

    def _reference_sums(self, tokens: torch.Tensor, targets: torch.Tensor, **inputs: Any):
        ref_model = self.model if self.reference is None else self.reference
        off = disable_adapter(self.model) if self.reference is None else nullcontext()
        with torch.no_grad(), off, compute_context(self.dtype, self.device):
            return sequence_sums(ref_model, tokens, targets, **inputs)

    def prepare(self, batch: Any) -> tuple[torch.Tensor, ...] | dict[str, Any]:
        """A collated batch (a tuple, or an image + text pair dict) on the device, with its
        labels shifted to next-token targets."""
        from tunesmith.recipes._finetune_setup import batch_to_device, shift_labels

        if isinstance(batch, Mapping):
            out = batch_to_device(batch, self.device)
            out["labels"] = shift_labels(out["labels"], IGNORE_INDEX)
            return out
        moved = [t.to(self.device, non_blocking=True) for t in batch]
        moved[1] = shift_labels(moved[1], IGNORE_INDEX)
        return tuple(moved)

    def __call__(
        self, batch: tuple[torch.Tensor, ...] | Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, metric sums)`` of a micro-batch from :meth:`prepare` (``targets``: the
        next-token-shifted labels); the loss is the mean over its rows."""
        if self.loss_fn.unpaired:
            return self._unpaired(*batch)
        inputs: dict[str, Any] = {}
        if isinstance(batch, Mapping):
            inputs = dict(batch)
            tokens, targets = inputs.pop("tokens"), inputs.pop("labels")
        else:
            tokens, targets = batch
        with self.activations_ctx:
            sums, counts = sequence_sums(self.model, tokens, targets, **inputs)
        average = self.loss_fn.average_log_probs
        policy = (sums / counts.clamp(min=1) if average else sums).chunk(2)
        extra: list[torch.Tensor] = []
        if isinstance(self.loss_fn, ORPOLoss):
            chosen_sums, chosen_counts = sums.chunk(2)[0], counts.chunk(2)[0]
            nll = -chosen_sums.sum() / chosen_counts.sum().clamp(min=1)
            losses, chosen_r, rejected_r = self.loss_fn(*policy, nll)
            log_odds = self.loss_fn.log_odds(*policy).detach()
            extra = [nll.detach(), F.logsigmoid(log_odds), log_odds]
        elif self.loss_fn.reference_free:
            losses, chosen_r, rejected_r = self.loss_fn(*policy)
        else:
            ref_sums, ref_counts = self._reference_sums(tokens, targets, **inputs)
            ref = (ref_sums / ref_counts.clamp(min=1) if average else ref_sums).chunk(2)
            losses, chosen_r, rejected_r = self.loss_fn(*policy, *ref)
        b = losses.numel()
        margins = chosen_r - rejected_r
        values = [losses, chosen_r, rejected_r, (margins > 0).double(), margins, *policy, *extra]
        counts_ = [b] * 7 + ([1, b, b] if extra else [])
        parts = _pairs(values, counts_) + [(targets != IGNORE_INDEX).sum().double()]
        return losses.mean(), torch.stack(parts)

    def _unpaired(
        self, tokens: torch.Tensor, targets: torch.Tensor, desirable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss_fn: KTOLoss = self.loss_fn  # type: ignore[assignment]
        b = desirable.numel()
        with self.activations_ctx:
            policy, _ = sequence_sums(self.model, tokens[:b], targets[:b])
        ref, _ = self._reference_sums(tokens, targets)  # matched rows and KL rows
        kl = None
        if loss_fn.uses_kl:
            with torch.no_grad(), self.activations_ctx:
                policy_kl, _ = sequence_sums(self.model, tokens[b:], targets[b:])
            local = (policy_kl - ref[b:]).mean().detach()
            if self.world_size > 1:  # TRL: the mean of the per-rank means, then clamped
                (local,) = reduce_metrics(local.clone())
                local = local / self.world_size
            kl = local.clamp(min=0)
        losses, chosen_r, rejected_r = loss_fn(policy, ref[:b], desirable, kl)
        n_good = int(desirable.sum())
        values = [losses, chosen_r, rejected_r, policy[desirable], policy[~desirable]]
        counts = [b, n_good, b - n_good, n_good, b - n_good]
        values.append(losses.new_zeros(()) if kl is None else kl)
        counts.append(0 if kl is None else 1)
        trained = (targets[:b] != IGNORE_INDEX).sum().double()
        return losses.mean(), torch.stack(_pairs(values, counts) + [trained])
