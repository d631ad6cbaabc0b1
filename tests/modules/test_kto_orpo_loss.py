"""KTO and ORPO against TRL 1.16, computed live on the same log-probs, values and gradients.

TRL has no standalone KTO loss: ``KTOTrainer._compute_loss`` is called unbound with a minimal
``self`` (precomputed reference log-probs) and a stand-in model whose per-token log-probs sum
to the log-probs under test, for both the matched and the mismatched (KL) sequences. ORPO's
``get_batch_loss_metrics`` runs with a stand-in ``concatenated_forward`` returning the same
token-mean log-probs and chosen NLL.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tunesmith.config import resolve_component
from tunesmith.rlhf.loss import KTOLoss, ORPOLoss

ACCELERATOR = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                              gather_for_metrics=lambda x: x)  # fmt: skip


def _per_token(values: torch.Tensor, length: int) -> torch.Tensor:
    """``[b, length]`` per-token log-probs whose rows sum to ``values`` (grad flows)."""
    return torch.cat([values[:, None], values.new_zeros(values.shape[0], length - 1)], dim=1)


def _trl_kto(
    loss_type: str, beta: float, wd: float, wu: float, policy: torch.Tensor, ref: torch.Tensor,
    policy_kl: torch.Tensor, ref_kl: torch.Tensor, labels: torch.Tensor,
) -> tuple[torch.Tensor, dict]:  # fmt: skip
    pytest.importorskip("trl")
    from trl.trainer.kto_trainer import KTOTrainer

    b, length = policy.shape[0], 5
    input_ids = torch.zeros(b, length + 1, dtype=torch.long)
    kl_input_ids = torch.ones(b, length + 1, dtype=torch.long)
    zeros = torch.zeros(b, length)

    def model(**kw):  # the matched or the mismatched (KL) sequences
        values = policy_kl if kw["input_ids"] is kl_input_ids else policy
        return SimpleNamespace(log_probs=_per_token(values, length), entropy=zeros,
                               mean_logits=zeros)  # fmt: skip

    self = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=ACCELERATOR, aux_loss_enabled=False,
        precompute_ref_logps=True, calculate_KL=loss_type == "kto", loss_type=loss_type,
        beta=beta, desirable_weight=wd, undesirable_weight=wu,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    self._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(self, m, batch)
    mask = torch.ones(b, length + 1, dtype=torch.long)
    inputs = {"input_ids": input_ids, "attention_mask": mask, "completion_mask": mask,
              "label": labels, "ref_logps": ref}  # fmt: skip
    if loss_type == "kto":
        inputs.update(KL_input_ids=kl_input_ids, KL_attention_mask=mask, KL_completion_mask=mask,
                      ref_KL_logps=ref_kl)  # fmt: skip
    loss = KTOTrainer._compute_loss(self, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in self._metrics["train"].items()}


def _rows(b: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {k: -torch.rand(b, generator=g, dtype=torch.float64) * 30 for k in ("p", "r", "pk", "rk")}
    out["r"] = out["p"] + torch.randn(b, generator=g, dtype=torch.float64) * 3
    out["pk"] = out["rk"] + torch.randn(b, generator=g, dtype=torch.float64) * 4 + 1.0
    out["labels"] = torch.rand(b, generator=g) < 0.6
    return out


@pytest.mark.parametrize(
    "loss_type, beta, wd, wu, seed",
    [("kto", 0.1, 1.0, 1.0, 0), ("kto", 0.5, 1.33, 0.7, 1), ("kto", 0.2, 1.0, 1.0, 5),
     ("apo_zero_unpaired", 0.1, 1.0, 1.0, 2), ("apo_zero_unpaired", 0.3, 2.0, 0.5, 3)],
)  # fmt: skip
def test_kto_equals_trl_in_value_and_gradient(loss_type, beta, wd, wu, seed) -> None:
    d = _rows(8, seed)
    if seed == 5:  # KL estimate below 0: both clamp it at 0
        d["pk"] = d["rk"] - 2.0
    ours_p = d["p"].clone().requires_grad_()
    theirs_p = d["p"].clone().requires_grad_()
    fn = KTOLoss(beta=beta, desirable_weight=wd, undesirable_weight=wu, loss_type=loss_type)
    kl = KTOLoss.estimate_kl(d["pk"], d["rk"]) if fn.uses_kl else None
    losses, chosen, rejected = fn(ours_p, d["r"], d["labels"], kl)
    assert losses.shape == (8,)
    assert chosen.shape == (int(d["labels"].sum()),) and rejected.shape == (8 - chosen.shape[0],)
    loss = losses.mean()
    ref, metrics = _trl_kto(loss_type, beta, wd, wu, theirs_p, d["r"], d["pk"], d["rk"],
                            d["labels"])  # fmt: skip
    assert abs(loss.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))
    loss.backward()
    ref.backward()
    torch.testing.assert_close(ours_p.grad, theirs_p.grad, rtol=1e-6, atol=1e-9)
    assert float(chosen.mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-9)
    assert float(rejected.mean()) == pytest.approx(metrics["rewards/rejected"], rel=1e-9)
    if kl is not None:
        assert float(kl) == pytest.approx(metrics["kl"], abs=1e-12)
        if seed == 5:
            assert float(kl) == 0.0


def test_kto_needs_kl_and_checks_arguments() -> None:
    x = torch.tensor([-3.0, -4.0])
    with pytest.raises(ValueError, match="reference point"):
        KTOLoss()(x, x, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="loss_type"):
        KTOLoss(loss_type="bco")
    # at the reference with a zero reference point, every row's loss is 1/2 of its weight
    losses, _, _ = KTOLoss(desirable_weight=2.0)(x, x, torch.tensor([True, False]), x.new_zeros(()))
    torch.testing.assert_close(losses, torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize("beta, seed", [(0.1, 0), (0.25, 1), (1.0, 2)])
def test_orpo_equals_trl_in_value_and_gradient(beta: float, seed: int) -> None:
    pytest.importorskip("trl")
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    g = torch.Generator().manual_seed(seed)
    b = 6
    chosen = -torch.rand(b, generator=g, dtype=torch.float64) * 3  # token means, some > -log 2
    rejected = -torch.rand(b, generator=g, dtype=torch.float64) * 3
    chosen[0], rejected[1] = -1e-3, -0.2  # both branches of log(1 - e^x)
    nll = torch.tensor(1.7, dtype=torch.float64)
    ours = [t.clone().requires_grad_() for t in (chosen, rejected, nll)]
    theirs = [t.clone().requires_grad_() for t in (chosen, rejected, nll)]
    losses, c_rew, r_rew = ORPOLoss(beta=beta)(*ours)
    loss = losses.mean()
    logits = torch.zeros(b, 3, 4)
    self = SimpleNamespace(beta=beta, accelerator=ACCELERATOR, aux_loss_enabled=False)
    self.odds_ratio_loss = lambda c, r: ORPOTrainer.odds_ratio_loss(self, c, r)
    self.concatenated_forward = lambda model, batch: (theirs[0], theirs[1], logits, logits,
                                                      theirs[2])  # fmt: skip
    ref, metrics = ORPOTrainer.get_batch_loss_metrics(self, None, {}, train_eval="train")
    assert abs(loss.item() - ref.item()) <= 1e-6
    loss.backward()
    ref.backward()
    for mine, trl_t in zip(ours, theirs):
        torch.testing.assert_close(mine.grad, trl_t.grad, rtol=1e-6, atol=1e-9)
    assert float(c_rew.mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-6)
    assert float(r_rew.mean()) == pytest.approx(metrics["rewards/rejected"], rel=1e-6)
    log_odds = ORPOLoss(beta).log_odds(chosen, rejected)
    assert float(log_odds.mean()) == pytest.approx(metrics["log_odds_chosen"], rel=1e-6)


def test_component_paths_resolve() -> None:
    assert resolve_component("tunesmith.rlhf.loss.KTOLoss") is KTOLoss
    assert resolve_component("tunesmith.rlhf.loss.ORPOLoss") is ORPOLoss
