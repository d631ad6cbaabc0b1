"""The per-step RL statistics against direct computations (and TRL's/torchtune's definitions)."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.rlhf import rl_metrics as M
from tunesmith.rlhf.grpo import GRPOPolicyLoss


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 5, 9, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]).bool()
    lp = -torch.rand(4, 5, generator=g) * 2
    return logits, mask, lp, lp + 0.3 * torch.randn(4, 5, generator=g)


def test_entropy_from_logits_and_from_per_token_values() -> None:
    logits, mask, _, _ = _data()
    p = torch.softmax(logits / 0.7, -1)
    per_token = -(p * p.log()).sum(-1)
    torch.testing.assert_close(M.token_entropy(logits, 0.7), per_token)
    expected = per_token[mask].mean()
    torch.testing.assert_close(M.masked_entropy(logits, mask, temperature=0.7), expected)
    torch.testing.assert_close(M.masked_entropy(per_token, mask), expected)
    uniform = torch.zeros(2, 3, 8)
    torch.testing.assert_close(M.masked_entropy(uniform), torch.tensor(math.log(8)))
    big = torch.tensor([[[1e4, 0.0, -1e4]]])  # stable for large logits: entropy ~0, not NaN
    assert M.token_entropy(big).abs().max() < 1e-6


def test_clip_fraction_equals_the_grpo_loss_clip_ratio() -> None:
    _, mask, lp, old = _data(1)
    ratio = torch.exp(lp - old)
    outside = (ratio < 0.8) | (ratio > 1.28)
    torch.testing.assert_close(
        M.clip_fraction(lp, old, mask, epsilon=0.2, epsilon_high=0.28), outside[mask].float().mean()
    )
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    _, metrics = GRPOPolicyLoss("bnpo", epsilon=0.2, epsilon_high=0.28, beta=0.0)(
        lp, old, None, adv, mask
    )
    got = M.clip_fraction(lp, old, mask, epsilon=0.2, epsilon_high=0.28, advantages=adv)
    torch.testing.assert_close(got, metrics["clip_ratio/region"])
    assert 0 < float(got) < float(outside[mask].float().mean())  # only the active side counts


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_approx_kl_estimators(estimator: str) -> None:
    _, mask, lp, other = _data(2)
    d = other - lp
    expected = {"k1": -d, "k2": 0.5 * d**2, "k3": torch.exp(d) - d - 1}[estimator]
    torch.testing.assert_close(M.approx_kl(lp, other, mask, estimator), expected[mask].mean())
    assert float(M.approx_kl(lp, lp, mask, estimator)) == 0.0


def test_approx_kl_k3_is_unbiased_for_the_true_kl() -> None:
    """Sampling from p, mean k3 (and k1) approaches KL(p || q) computed exactly."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    true_kl = (p * (p / q).log()).sum()
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = M.approx_kl(p.log()[x], q.log()[x], estimator="k3")
    assert float(est) == pytest.approx(float(true_kl), rel=0.05)
    with pytest.raises(ValueError, match="k1"):
        M.approx_kl(p, q, estimator="k4")


def test_reward_advantage_and_length_stats() -> None:
    total = torch.tensor([1.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    per_fn = {"math": torch.tensor([1.0, 0, 1, 1, 1, 1, 1, 1]), "format": total - 1}
    s = M.reward_stats(total, per_fn, group_size=4)
    assert float(s["reward/mean"]) == pytest.approx(11 / 8)
    assert float(s["reward/std"]) == pytest.approx(float(total.std(unbiased=False)))
    assert float(s["reward/min"]) == 0 and float(s["reward/max"]) == 2
    assert float(s["reward/math/mean"]) == pytest.approx(7 / 8)
    assert "reward/format/std" in s
    assert float(s["reward/zero_std_fraction"]) == 0.5  # the second group is all 2.0
    assert float(s["reward/group_std"]) == pytest.approx(math.sqrt(3 / 16) / 2)
    a = M.advantage_stats(torch.tensor([-1.0, 1.0, 3.0]))
    assert [float(a[f"advantage/{k}"]) for k in ("mean", "min", "max")] == [1.0, -1.0, 3.0]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]]).bool()
    r = M.response_length_stats(mask, torch.tensor([False, True, False]))
    assert float(r["response_length/mean"]) == pytest.approx(5 / 3)
    assert float(r["response_length/min"]) == 0 and float(r["response_length/max"]) == 3
    assert float(r["truncated_fraction"]) == pytest.approx(1 / 3)
    empty = M.tensor_stats(torch.ones(2, 2), "x", mask=torch.zeros(2, 2, dtype=torch.bool))
    assert all(float(v) == 0 for v in empty.values())
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in s.values())
