"""GRPO losses and advantages against TRL 1.16's GRPOTrainer, computed live.

TRL has no standalone GRPO loss: ``GRPOTrainer._compute_loss`` is called unbound with a
minimal ``self`` (its real ``_get_per_token_logps_and_entropies`` bound to it) and a stand-in
model whose per-token log-probs are the ones under test, so TRL's own code computes the loss,
its metrics and, through autograd, the gradient. TRL's advantage block (inline in
``_generate_and_score_completions``) is cut out of the installed source and run as is.
"""

from __future__ import annotations

import contextlib
import inspect
import textwrap
import types
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tunesmith.rlhf.grpo import LOSS_TYPES, GRPOPolicyLoss, group_advantages

B, P, N, G = 8, 3, 7, 4


def _batch(seed: int = 0, spread: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, N, generator=g, dtype=torch.float64) * 3
    lengths = torch.tensor([7, 3, 5, 1, 6, 7, 2, 4])
    mask = torch.arange(N)[None, :] < lengths[:, None]
    return {
        "logps": logps,
        "old": logps + spread * torch.randn(B, N, generator=g, dtype=torch.float64),
        "ref": logps + spread * torch.randn(B, N, generator=g, dtype=torch.float64),
        "adv": torch.randn(B, generator=g, dtype=torch.float64),
        "mask": mask,
    }


def _trl_self(trl_module, loss_type: str, beta: float, eps: float, eps_high: float, level: str,
              bias_kl: bool, max_len: int) -> SimpleNamespace:  # fmt: skip
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), num_processes=1, is_main_process=True,
        gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x,
        autocast=contextlib.nullcontext,
    )  # fmt: skip
    self = SimpleNamespace(
        accelerator=accelerator, model=SimpleNamespace(training=True), state=SimpleNamespace(global_step=0),
        args=SimpleNamespace(report_to=[], use_bias_correction_kl=bias_kl, delta=None, steps_per_generation=1),
        loss_type=loss_type, beta=beta, epsilon_low=eps, epsilon_high=eps_high,
        importance_sampling_level=level, max_completion_length=max_len, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, use_vllm=False, vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )  # fmt: skip
    cls = trl_module.GRPOTrainer
    self._get_per_token_logps_and_entropies = types.MethodType(
        cls._get_per_token_logps_and_entropies, self
    )
    return self


def _trl_loss(d: dict, logps: torch.Tensor, *, loss_type: str, beta: float, eps: float = 0.2,
              eps_high: float | None = None, level: str = "token", bias_kl: bool = True,
              max_len: int = N, num_items: float | None = None) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """TRL's loss (grad flows into ``logps``) and its logged metrics."""
    trl = pytest.importorskip("trl")
    self = _trl_self(trl, loss_type, beta, eps, eps if eps_high is None else eps_high, level,
                     bias_kl, max_len)  # fmt: skip
    mask = d["mask"].long()

    def model(input_ids, attention_mask, labels, fused_lm_head):  # TRL's fused-head outputs
        assert fused_lm_head and input_ids.shape == (B, P + N)
        pad = torch.zeros(B, P, dtype=logps.dtype)
        return SimpleNamespace(log_probs=torch.cat([pad, logps], 1),
                               entropy=torch.zeros(B, P + N, dtype=logps.dtype))  # fmt: skip

    inputs = {
        "prompt_ids": torch.ones(B, P, dtype=torch.long), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.ones(B, N, dtype=torch.long), "completion_mask": mask,
        "advantages": d["adv"], "old_per_token_logps": d["old"], "ref_per_token_logps": d["ref"],
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items)),
    }  # fmt: skip
    loss = trl.GRPOTrainer._compute_loss(self, model, inputs)
    return loss, {k: v[-1] for k, v in self._metrics["train"].items()}


CASES = [
    # (loss_type, beta, epsilon, epsilon_high, importance_sampling_level, use_bias_correction_kl)
    ("grpo", 0.04, 0.2, None, "token", True),
    ("grpo", 0.0, 0.2, None, "token", True),
    ("grpo", 0.1, 0.2, None, "token", False),
    ("dr_grpo", 0.04, 0.2, None, "token", True),
    ("dapo", 0.0, 0.2, 0.28, "token", True),
    ("dapo", 0.04, 0.1, 0.3, "token", False),
    ("bnpo", 0.04, 0.2, None, "token", True),
    ("gspo", 0.04, 3e-2, 4e-2, "sequence", True),
    ("gspo", 0.0, 3e-2, 4e-2, "sequence", False),
]


@pytest.mark.parametrize("loss_type, beta, eps, eps_high, level, bias_kl", CASES)
def test_grpo_loss_variants_equal_trl(loss_type, beta, eps, eps_high, level, bias_kl) -> None:
    """Loss, gradient and the kl / clip-ratio metrics equal TRL's GRPOTrainer."""
    d = _batch(seed=1)
    trl_type = "grpo" if loss_type == "gspo" else loss_type
    theirs_lp = d["logps"].clone().requires_grad_()
    theirs, metrics = _trl_loss(d, theirs_lp, loss_type=trl_type, beta=beta, eps=eps,
                                eps_high=eps_high, level=level, bias_kl=bias_kl)  # fmt: skip
    theirs.backward()
    ours_fn = GRPOPolicyLoss(loss_type, epsilon=eps, epsilon_high=eps_high, beta=beta,
                             importance_sampling_level=level, use_bias_correction_kl=bias_kl)  # fmt: skip
    ours_lp = d["logps"].clone().requires_grad_()
    ours, ours_metrics = ours_fn(ours_lp, d["old"], d["ref"], d["adv"], d["mask"])
    ours.backward()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, rtol=0, atol=1e-12)
    assert (ours_lp.grad[~d["mask"]] == 0).all()
    assert metrics["clip_ratio/region_mean"] > 0  # the batch exercises the clipping
    for name in ("low", "high", "region"):
        assert float(ours_metrics[f"clip_ratio/{name}"]) == pytest.approx(
            metrics[f"clip_ratio/{name}_mean"],
            abs=1e-6,  # TRL counts in float32
        )
    if beta:
        assert float(ours_metrics["kl"]) == pytest.approx(metrics["kl"], abs=1e-12)
    else:
        assert "kl" not in ours_metrics and "kl" not in metrics


def test_dr_grpo_constant_and_dapo_num_items_equal_trl() -> None:
    """dr_grpo's max_completion_length and dapo's global token count are the divisors TRL uses."""
    d = _batch(seed=2)
    theirs, _ = _trl_loss(d, d["logps"], loss_type="dr_grpo", beta=0.04, max_len=32)
    ours, _ = GRPOPolicyLoss("dr_grpo", beta=0.04, max_completion_length=32)(
        d["logps"], d["old"], d["ref"], d["adv"], d["mask"]
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    theirs, _ = _trl_loss(d, d["logps"], loss_type="dapo", beta=0.04, num_items=97.0)
    ours, _ = GRPOPolicyLoss("dapo", beta=0.04)(
        d["logps"], d["old"], d["ref"], d["adv"], d["mask"], num_items=97
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_on_policy_defaults_and_errors() -> None:
    """old_logprobs=None means on-policy (ratio 1, nothing clipped, TRL's shortcut);
    bad arguments fail with the accepted values named."""
    d = _batch(seed=3)
    lp = d["logps"].clone().requires_grad_()
    loss, m = GRPOPolicyLoss("grpo", beta=0.0)(lp, None, None, d["adv"], d["mask"])
    assert float(m["ratio"]) == pytest.approx(1.0) and float(m["clip_ratio/region"]) == 0
    theirs_lp = d["logps"].clone().requires_grad_()
    theirs, _ = _trl_loss(dict(d, old=None), theirs_lp, loss_type="grpo", beta=0.0)
    loss.backward()
    theirs.backward()
    torch.testing.assert_close(lp.grad, theirs_lp.grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="grpo, dr_grpo, dapo, bnpo, gspo"):
        GRPOPolicyLoss("ppo")
    with pytest.raises(ValueError, match="ref_logprobs"):
        GRPOPolicyLoss(beta=0.1)(lp, None, None, d["adv"], d["mask"])
    with pytest.raises(ValueError, match=r"mask has shape \(8, 6\); logprobs has \(8, 7\)"):
        GRPOPolicyLoss(beta=0.0)(lp, None, None, d["adv"], d["mask"][:, :6])
    with pytest.raises(ValueError, match="advantages must be"):
        GRPOPolicyLoss(beta=0.0)(lp, None, None, d["adv"][:4], d["mask"])
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.zeros(4), 2, scale="global")
    with pytest.raises(ValueError, match="multiple of group_size=3"):
        group_advantages(torch.zeros(4), 3)


def _trl_advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, group_size: int,
                    scale: str) -> torch.Tensor:  # fmt: skip
    """Run TRL's own advantage block, cut from the installed GRPOTrainer source."""
    trl = pytest.importorskip("trl")
    from trl.trainer import grpo_trainer

    src = inspect.getsource(trl.GRPOTrainer._generate_and_score_completions)
    start = src.index('        if self.multi_objective_aggregation == "sum_then_normalize":')
    end_marker = "advantages = torch.nan_to_num(advantages, nan=0.0)"
    end = src.index(end_marker, start) + len(end_marker)
    block = textwrap.dedent(src[start:end])
    self = SimpleNamespace(multi_objective_aggregation="sum_then_normalize",
                           reward_weights=weights, scale_rewards=scale)  # fmt: skip
    scope = {"self": self, "torch": torch, "nanstd": grpo_trainer.nanstd, "device": "cpu",
             "rewards_per_func": rewards_per_func, "num_generations": group_size,
             "unscorable_mask": torch.isnan(rewards_per_func).all(dim=1)}  # fmt: skip
    exec(compile(block, "trl-advantages", "exec"), scope)
    return scope["advantages"]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl(scale: str) -> None:
    g = torch.Generator().manual_seed(4)
    per_func = torch.randint(0, 3, (12, 2), generator=g).double()
    per_func[4:8] = 1.0  # a group whose rewards are all equal: advantage 0, no NaN
    per_func[9] = float("nan")  # unscorable completion: left out of its group, advantage 0
    weights = torch.tensor([1.0, 0.5], dtype=torch.float64)
    theirs = _trl_advantages(per_func, weights, G, scale)
    total = (per_func * weights).nansum(1)
    total[torch.isnan(per_func).all(1)] = float("nan")
    ours = group_advantages(total, G, scale=scale)
    # TRL's nanstd forms Bessel's count / (count - 1) in float32: agreement to ~1e-8
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-7)
    assert ours[9] == 0 and (ours[4:8] == 0).all()


def test_group_advantages_match_torchtune_formula() -> None:
    """torchtune's dev GRPO recipe: (r - group mean) / (group std (unbiased) + 1e-4)."""
    r = torch.tensor([[1.0, 0.0, 2.0, 1.0], [0.5, 0.5, 3.0, 0.0]])
    expected = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(group_advantages(r.reshape(-1), 4), expected.reshape(-1))


def test_loss_types_are_documented() -> None:
    assert set(LOSS_TYPES) == {"grpo", "dr_grpo", "dapo", "bnpo", "gspo"}
    assert GRPOPolicyLoss("gspo").importance_sampling_level == "sequence"


def test_float32_inputs_equal_trl() -> None:
    """The recipe's dtype: float32 log-probs agree with TRL to 1e-6, loss and gradient."""
    d = {k: (v.float() if v.is_floating_point() else v) for k, v in _batch(seed=5).items()}
    for loss_type in ("grpo", "dapo"):
        theirs_lp = d["logps"].clone().requires_grad_()
        theirs, _ = _trl_loss(d, theirs_lp, loss_type=loss_type, beta=0.04)
        theirs.backward()
        ours_lp = d["logps"].clone().requires_grad_()
        ours, _ = GRPOPolicyLoss(loss_type, beta=0.04)(
            ours_lp, d["old"], d["ref"], d["adv"], d["mask"]
        )
        ours.backward()
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "gspo", "dr_grpo", "dapo"])
def test_micro_batch_accumulation_equals_the_full_batch(loss_type: str) -> None:
    """The module docstring's accumulation rule: k equal micro-batches, each grpo/gspo/dr_grpo
    loss / k, dapo with num_items = all tokens, summed: the gradient of the full batch. (bnpo
    normalises by each micro-batch's own tokens, TRL's definition, so it is not invariant.)"""
    d = _batch(seed=6)
    fn = GRPOPolicyLoss(loss_type, beta=0.04, epsilon_high=0.28)
    full = d["logps"].clone().requires_grad_()
    fn(full, d["old"], d["ref"], d["adv"], d["mask"])[0].backward()
    acc = d["logps"].clone().requires_grad_()
    k, total_tokens = 2, d["mask"].sum()
    for rows in torch.arange(B).chunk(k):
        loss, _ = fn(acc[rows], d["old"][rows], d["ref"][rows], d["adv"][rows], d["mask"][rows],
                     num_items=total_tokens)  # fmt: skip
        (loss if loss_type == "dapo" else loss / k).backward()
    torch.testing.assert_close(acc.grad, full.grad, rtol=1e-12, atol=1e-12)
