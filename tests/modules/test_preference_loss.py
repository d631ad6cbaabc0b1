"""Preference losses and sequence log-probs against TRL's DPO trainer and torchtune 0.6.1.

TRL (>= 1.x) has no standalone loss function: ``DPOTrainer._compute_loss`` is called unbound
with a minimal ``self`` and a stand-in model whose per-token log-probs sum to the log-probs
under test, with the reference log-probs passed as precomputed, one pair at a time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunesmith.config import resolve_component
from tunesmith.rlhf import get_batch_log_probs, sequence_log_probs
from tunesmith.rlhf.loss import DPOLoss, IPOLoss, RSOLoss, SimPOLoss

PEER_PYTHON = Path.home() / ".cache" / "tunesmith-bench" / "peer-venv" / "bin" / "python"


def _pairs(b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        k: -torch.rand(b, generator=g, dtype=torch.float64) * 40 for k in ("pc", "pr", "rc", "rr")
    }
    out["nc"] = torch.randint(1, 30, (b,), generator=g)
    out["nr"] = torch.randint(1, 30, (b,), generator=g)
    return out


def _trl_pair_loss(loss_type: str, beta: float, pc: float, pr: float, rc: float, rr: float,
                   nc: int, nr: int) -> tuple[float, dict]:  # fmt: skip
    """TRL's loss and logged metrics for one pair with summed log-probs and lengths nc / nr."""
    trl = pytest.importorskip("trl")
    length = max(nc, nr) + 1
    completion = torch.zeros(2, length, dtype=torch.long)
    completion[0, 1 : nc + 1] = 1
    completion[1, 1 : nr + 1] = 1
    per_token = torch.zeros(2, length - 1, dtype=torch.float64)
    per_token[0, 0], per_token[1, 0] = pc, pr  # TRL sums the row
    zeros = torch.zeros(2, length - 1)
    outputs = SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                              is_top1=zeros.bool())  # fmt: skip
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                  gather_for_metrics=lambda x: x)  # fmt: skip
    self = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.zeros(2, length, dtype=torch.long),
        "attention_mask": torch.ones(2, length, dtype=torch.long),
        "completion_mask": completion,
        "ref_chosen_logps": torch.tensor([rc], dtype=torch.float64),
        "ref_rejected_logps": torch.tensor([rr], dtype=torch.float64),
    }
    loss = trl.DPOTrainer._compute_loss(self, lambda **_: outputs, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in self._metrics["train"].items()}


@pytest.mark.parametrize(
    "loss_type, ours",
    [("sigmoid", DPOLoss(beta=0.1)), ("sigmoid", DPOLoss(beta=0.5)), ("hinge", RSOLoss(gamma=0.1)),
     ("hinge", RSOLoss(gamma=0.3)), ("ipo", IPOLoss(tau=0.1)), ("ipo", IPOLoss(tau=0.02))],
)  # fmt: skip
def test_losses_equal_trl(loss_type: str, ours: torch.nn.Module) -> None:
    p = _pairs()
    scale = getattr(ours, "beta", None) or getattr(ours, "gamma", None) or ours.tau
    if ours.average_log_probs:  # the recipe feeds token means; TRL divides sums by the lengths
        args = (p["pc"] / p["nc"], p["pr"] / p["nr"], p["rc"] / p["nc"], p["rr"] / p["nr"])
    else:
        args = (p["pc"], p["pr"], p["rc"], p["rr"])
    losses, chosen_rewards, rejected_rewards = ours(*args)
    assert losses.shape == chosen_rewards.shape == rejected_rewards.shape == (6,)
    for i in range(6):
        pair = [float(p[k][i]) for k in ("pc", "pr", "rc", "rr")]
        ref, metrics = _trl_pair_loss(loss_type, scale, *pair, int(p["nc"][i]), int(p["nr"][i]))
        assert float(losses[i]) == pytest.approx(ref, rel=1e-9, abs=1e-12)
        if not ours.average_log_probs:  # TRL's rewards are scale x summed log-ratios
            assert float(chosen_rewards[i]) == pytest.approx(metrics["rewards/chosen"], rel=1e-9)
            assert float(rejected_rewards[i]) == pytest.approx(
                metrics["rewards/rejected"], rel=1e-9
            )


@pytest.mark.parametrize("beta, gamma, eps", [(2.0, 0.5, 0.0), (2.5, 1.0, 0.0), (2.0, 0.3, 0.1)])
def test_simpo_equals_trl_cpo(beta: float, gamma: float, eps: float) -> None:
    """SimPO on token-mean log-probs == TRL's CPOTrainer.cpo_loss with loss_type='simpo'."""
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    p = _pairs()
    chosen, rejected = p["pc"] / p["nc"], p["pr"] / p["nr"]
    ours = SimPOLoss(beta=beta, gamma=gamma, label_smoothing=eps)
    assert ours.reference_free and ours.average_log_probs
    self = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta,
                           label_smoothing=eps, accelerator=SimpleNamespace(device="cpu"))  # fmt: skip
    for mine, theirs in zip(ours(chosen, rejected), CPOTrainer.cpo_loss(self, chosen, rejected)):
        torch.testing.assert_close(mine, theirs)


def test_dpo_starts_at_log2_and_label_smoothing_is_conservative_dpo() -> None:
    x = torch.tensor([-5.0, -7.0])
    losses, chosen, rejected = DPOLoss()(x, x, x, x)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0
    p = _pairs()
    args = (p["pc"], p["pr"], p["rc"], p["rr"])
    eps = 0.2
    plain = DPOLoss(beta=0.1)(*args)[0]
    flipped = DPOLoss(beta=0.1)(p["pr"], p["pc"], p["rr"], p["rc"])[0]  # swapped labels
    assert torch.allclose(DPOLoss(0.1, eps)(*args)[0], (1 - eps) * plain + eps * flipped)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOLoss(label_smoothing=0.5)


def test_torchtune_component_paths_resolve() -> None:
    assert resolve_component("torchtune.rlhf.loss.DPOLoss") is DPOLoss
    assert resolve_component("torchtune.rlhf.loss.RSOLoss") is RSOLoss
    assert resolve_component("torchtune.rlhf.loss.SimPOLoss") is SimPOLoss
    assert resolve_component("torchtune.rlhf.get_batch_log_probs") is get_batch_log_probs
    assert callable(resolve_component("torchtune.data.padded_collate_dpo"))


def _logits_and_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, 9, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 50, (4, 9), generator=g)
    labels[0, :3] = -100
    labels[1, 6:] = -100
    labels[2, :] = -100  # nothing counted: log-prob 0
    return hidden, labels, torch.randn(50, 16, generator=g, dtype=torch.float64)


def test_sequence_log_probs_equal_full_logits_and_gradients() -> None:
    """Chunked hidden-state log-probs == log_softmax over full logits, values and gradients."""
    hidden, labels, weight = _logits_and_labels()
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    h1 = hidden.clone().requires_grad_()
    full = torch.log_softmax(h1 @ weight.T, -1)
    ref = (full.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets != -100)).sum(-1)
    ref.sum().backward()
    h2 = hidden.clone().requires_grad_()
    sums, counts = sequence_log_probs(h2, targets, lambda h: h @ weight.T, chunk_size=5)
    sums.sum().backward()
    torch.testing.assert_close(sums, ref)
    assert counts.tolist() == (targets != -100).sum(-1).tolist()
    assert sums[2] == 0
    torch.testing.assert_close(h2.grad, h1.grad)
    logits = hidden @ weight.T
    torch.testing.assert_close(get_batch_log_probs(logits, labels), ref)
    mean = get_batch_log_probs(logits, labels, return_average_logprobs=True)
    torch.testing.assert_close(mean, ref / counts.clamp(min=1))


_PEER_SCRIPT = """
import json, sys, torch
from torchtune import rlhf
from torchtune.rlhf.loss import DPOLoss, RSOLoss
d = json.load(open(sys.argv[1]))
a = [torch.tensor(d[k], dtype=torch.float64) for k in ("pc", "pr", "rc", "rr")]
out = {}
for name, fn in [("dpo", DPOLoss(0.1, 0.0)), ("dpo_smooth", DPOLoss(0.3, 0.2)), ("rso", RSOLoss(0.2))]:
    out[name] = [t.tolist() for t in fn(*a)]
logits = torch.tensor(d["logits"], dtype=torch.float64)
labels = torch.tensor(d["labels"])
out["logps"] = rlhf.get_batch_log_probs(logits, labels).tolist()
out["logps_mean"] = rlhf.get_batch_log_probs(logits, labels, return_average_logprobs=True).tolist()
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="torchtune 0.6.1 peer venv not installed")
def test_equal_torchtune_0_6_1(tmp_path: Path) -> None:
    """torchtune's DPOLoss (with label smoothing), RSOLoss and get_batch_log_probs, run live."""
    p = _pairs(seed=3)
    hidden, labels, weight = _logits_and_labels(seed=4)
    labels[2, 5] = 3  # torchtune's token mean of an empty row is NaN
    logits = hidden @ weight.T
    data = {k: p[k].tolist() for k in ("pc", "pr", "rc", "rr")}
    data.update(logits=logits.tolist(), labels=labels.tolist())
    (tmp_path / "in.json").write_text(json.dumps(data))
    (tmp_path / "peer.py").write_text(_PEER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(PEER_PYTHON), str(tmp_path / "peer.py"), str(tmp_path / "in.json"),
                    str(tmp_path / "out.json")], check=True, env=env, timeout=300)  # fmt: skip
    ref = json.loads((tmp_path / "out.json").read_text())
    args = (p["pc"], p["pr"], p["rc"], p["rr"])
    for name, ours in [("dpo", DPOLoss(0.1, 0.0)), ("dpo_smooth", DPOLoss(0.3, 0.2)),
                       ("rso", RSOLoss(0.2))]:  # fmt: skip
        for mine, theirs in zip(ours(*args), ref[name]):
            torch.testing.assert_close(mine, torch.tensor(theirs, dtype=torch.float64))
    torch.testing.assert_close(get_batch_log_probs(logits, labels).double(),
                               torch.tensor(ref["logps"], dtype=torch.float64), rtol=1e-6, atol=1e-5)  # fmt: skip
    mean = get_batch_log_probs(logits, labels, return_average_logprobs=True).double()
    torch.testing.assert_close(mean, torch.tensor(ref["logps_mean"], dtype=torch.float64),
                               rtol=1e-6, atol=1e-5)  # fmt: skip
