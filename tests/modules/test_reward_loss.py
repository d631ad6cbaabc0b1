"""Bradley-Terry reward loss against TRL 1.16's ``RewardTrainer.compute_loss``, run live (unbound,
with a minimal ``self`` and a stand-in model whose logits are the scores under test)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tunesmith.rlhf.reward_loss import BradleyTerryLoss, reward_metrics


def _trl_reward_loss(scores: torch.Tensor, coef: float | None, margin: torch.Tensor | None):
    """TRL's loss and metrics for ``scores`` ``[2b]`` (chosen rows first)."""
    pytest.importorskip("trl")
    from trl.trainer.reward_trainer import RewardTrainer

    accelerator = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
    self = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator,
        args=SimpleNamespace(center_rewards_coefficient=coef),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {"input_ids": torch.zeros(scores.shape[0], 3, dtype=torch.long),
              "attention_mask": torch.ones(scores.shape[0], 3, dtype=torch.long)}  # fmt: skip
    if margin is not None:
        inputs["margin"] = margin

    def model(**_):
        return SimpleNamespace(logits=scores[:, None])

    loss = RewardTrainer.compute_loss(self, model, inputs)
    return loss, {k: v[-1] for k, v in self._metrics["train"].items()}


@pytest.mark.parametrize("coef, with_margin", [(None, False), (0.01, False), (None, True),
                                               (0.1, True)])  # fmt: skip
def test_bradley_terry_equals_trl_in_value_and_gradient(coef, with_margin) -> None:
    g = torch.Generator().manual_seed(3)
    b = 7
    scores = torch.randn(2 * b, generator=g, dtype=torch.float64) * 2
    margin = torch.rand(b, generator=g, dtype=torch.float64) if with_margin else None
    ours_s, theirs_s = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    chosen, rejected = ours_s.chunk(2)
    loss = BradleyTerryLoss(center_rewards_coefficient=coef)(chosen, rejected, margin)
    ref, metrics = _trl_reward_loss(theirs_s, coef, margin)
    assert abs(loss.item() - ref.item()) <= 1e-6
    loss.backward()
    ref.backward()
    torch.testing.assert_close(ours_s.grad, theirs_s.grad, rtol=1e-6, atol=1e-9)
    sums = reward_metrics(chosen, rejected)
    assert (sums[0] / b).item() == pytest.approx(metrics["accuracy"], rel=1e-6)
    assert (sums[1] / b).item() == pytest.approx(metrics["margin"], rel=1e-9)
    assert ((sums[2] + sums[3]) / (2 * b)).item() == pytest.approx(metrics["mean_reward"], rel=1e-9)


def test_center_coefficient_zero_is_plain_and_negative_fails() -> None:
    c, r = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    torch.testing.assert_close(BradleyTerryLoss(0.0)(c, r), BradleyTerryLoss()(c, r))
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        BradleyTerryLoss(-1.0)
