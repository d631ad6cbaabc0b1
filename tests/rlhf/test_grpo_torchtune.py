"""torchtune main's dev GRPO losses: our classes against torchtune's own source, run live.

torchtune main cannot be installed here, but its ``dev/grpo/loss.py`` and
``dev/rl/linear_grpo_loss.py`` need only torch and ``torchtune.rlhf``'s ``masked_mean`` /
``masked_sum``: the files are read from the torchtune mirror (``git show HEAD:...``) and run
as modules over a stand-in ``torchtune`` package built from torchtune's own
``rlhf/rewards.py``. Without the mirror those tests skip; the formula tests below run always.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from tunesmith.config import resolve_component
from tunesmith.rlhf import grpo
from tunesmith.rlhf.grpo import (
    GRPOLoss,
    GRPOSimpleLoss,
    GRPOWithChunkedOutputLoss,
    LinearGRPOLoss,
)

MIRROR = Path(os.environ.get("TUNESMITH_TORCHTUNE_MIRROR", "/work/.mirror/pytorch+torchtune/repo"))


def _show(path: str) -> str:
    if not MIRROR.is_dir():
        pytest.skip(f"torchtune source mirror not present at {MIRROR}")
    out = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{path}"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    if out.returncode:
        pytest.skip(f"{path} not in the torchtune mirror: {out.stderr.strip()}")
    return out.stdout


def _module(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(source, name, "exec"), mod.__dict__)
    return mod


@pytest.fixture(scope="module")
def torchtune_main() -> types.SimpleNamespace:
    """torchtune HEAD's GRPO loss modules, executed over its own masked_mean/masked_sum."""
    rewards = _module("torchtune.rlhf.rewards", _show("torchtune/rlhf/rewards.py"))
    rlhf = types.ModuleType("torchtune.rlhf")
    rlhf.masked_mean, rlhf.masked_sum = rewards.masked_mean, rewards.masked_sum
    pkg = types.ModuleType("torchtune")
    pkg.rlhf = rlhf
    modules_loss = types.ModuleType("torchtune.modules.loss")
    modules_loss.RLLoss = type("RLLoss", (), {})
    fake = {"torchtune": pkg, "torchtune.rlhf": rlhf, "torchtune.modules": types.ModuleType("m"),
            "torchtune.modules.loss": modules_loss}  # fmt: skip
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        loss = _module("tt_grpo_loss", _show("torchtune/dev/grpo/loss.py"))
        linear = _module("tt_linear_grpo", _show("torchtune/dev/rl/linear_grpo_loss.py"))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return types.SimpleNamespace(loss=loss, linear=linear)


def _inputs(seed: int = 0, b: int = 6, n: int = 9, v: int = 11) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, v, generator=g)
    targets = torch.randint(0, v, (b, n), generator=g)
    pi = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    lengths = torch.tensor([9, 4, 1, 7, 9, 3])[:b]
    return {
        "logits": logits, "targets": targets, "pi": pi,
        "old": pi + 0.3 * torch.randn(b, n, generator=g),
        "ref": pi + 0.3 * torch.randn(b, n, generator=g),
        "adv": torch.randn(b, generator=g),
        "mask": torch.arange(n)[None, :] < lengths[:, None],
    }  # fmt: skip


def _assert_same_outputs_and_grads(ours_fn, theirs_fn, make_args) -> None:
    """Equal returned tuples (<= 1e-6) and equal gradients of the loss w.r.t. the first
    differentiable argument ``make_args`` returns."""
    a1, a2 = make_args(), make_args()
    mine, theirs = ours_fn(*a1[0], **a1[1]), theirs_fn(*a2[0], **a2[1])
    assert len(mine) == len(theirs)
    for x, y in zip(mine, theirs, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    mine[0].backward()
    theirs[0].backward()
    torch.testing.assert_close(a1[2].grad, a2[2].grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, kwargs", [("GRPOLoss", {"epsilon": 0.1, "kl_coeff": 0.1}),
                                          ("GRPOLoss", {"epsilon": 0.2, "kl_coeff": 0.04}),
                                          ("GRPOSimpleLoss", {"epsilon": 0.1, "kl_coeff": 0.1}),
                                          ("GRPOSimpleLoss", {"kl_coeff": 0.0})])  # fmt: skip
def test_logprob_losses_equal_torchtune_main(torchtune_main, name: str, kwargs: dict) -> None:
    d = _inputs()

    def make_args():
        pi = d["pi"].clone().requires_grad_()
        return (d["old"], pi, d["ref"], d["adv"]), {"padding_masks": d["mask"]}, pi

    theirs = getattr(torchtune_main.loss, name)(**kwargs)
    _assert_same_outputs_and_grads(getattr(grpo, name)(**kwargs), theirs, make_args)


@pytest.mark.parametrize("chunks", [1, 3])
def test_chunked_output_loss_equals_torchtune_main(torchtune_main, chunks: int) -> None:
    d = _inputs(seed=1)

    def make_args():
        logits = d["logits"].clone().requires_grad_()
        pieces = list(logits.chunk(chunks, dim=1)) if chunks > 1 else logits
        return (pieces, d["targets"], d["ref"], d["adv"]), {"padding_masks": d["mask"]}, logits

    ours = GRPOWithChunkedOutputLoss(num_output_chunks=chunks, kl_coeff=0.05)
    theirs = torchtune_main.loss.GRPOWithChunkedOutputLoss(num_output_chunks=chunks, kl_coeff=0.05)
    _assert_same_outputs_and_grads(ours, theirs, make_args)


def test_linear_grpo_loss_equals_torchtune_main(torchtune_main) -> None:
    d = _inputs(seed=2)
    proj = torch.nn.Linear(5, 11, bias=False)
    hidden = torch.randn(6, 9, 5, generator=torch.Generator().manual_seed(3))
    model = types.SimpleNamespace(output=proj)
    ours, theirs = LinearGRPOLoss(num_output_chunks=4), torchtune_main.linear.LinearGRPOLoss(4)
    ours.set_model_output(model)
    theirs.set_model_output(model)
    assert model.skip_output_layer is True

    def make_args():
        h = hidden.clone().requires_grad_()
        return (h, d["targets"], d["ref"], d["adv"]), {"padding_masks": d["mask"]}, h

    _assert_same_outputs_and_grads(ours, theirs, make_args)


def test_torchtune_losses_match_their_formulas() -> None:
    """Independent of torchtune's source: GRPOLoss is the token-level clipped objective with a
    k3 KL, masked means over all tokens; GRPOSimpleLoss's value is the per-sequence mean of
    ``-(A - beta * kl)`` and its gradient that of ``A * logprob``; the chunked loss equals the
    simple one on the log-probs of its logits."""
    d = _inputs(seed=4)
    m = d["mask"].float()
    ratio = torch.exp(d["pi"] - d["old"])
    a = d["adv"][:, None]
    obj = torch.minimum(a * ratio, a * ratio.clamp(0.8, 1.2))
    kl = torch.exp(d["ref"] - d["pi"]) - (d["ref"] - d["pi"]) - 1
    loss, policy, kl_loss, _, clipfrac = GRPOLoss(epsilon=0.2, kl_coeff=0.1)(
        d["old"], d["pi"], d["ref"], d["adv"], d["mask"]
    )
    torch.testing.assert_close(policy, (obj * m).sum() / m.sum())
    torch.testing.assert_close(kl_loss, (kl * m).sum() / m.sum())
    torch.testing.assert_close(loss, -(policy - 0.1 * kl_loss))
    clipped = ((a * ratio.clamp(0.8, 1.2)) < (a * ratio)).float()
    torch.testing.assert_close(clipfrac, (clipped * m).sum() / m.sum())

    pi = d["pi"].clone().requires_grad_()
    loss, policy, kl_loss, ratios, clipfrac = GRPOSimpleLoss(kl_coeff=0.1)(
        d["old"], pi, d["ref"], d["adv"], d["mask"]
    )
    per_seq = ((-(a - 0.1 * kl)) * m).sum(1) / m.sum(1)
    torch.testing.assert_close(loss, per_seq.mean())
    assert float(ratios) == 1.0 and float(clipfrac) == 0.0
    loss.backward()
    pi_ref = d["pi"].clone().requires_grad_()
    kl_r = torch.exp(d["ref"] - pi_ref) - (d["ref"] - pi_ref) - 1
    surrogate = ((-(a * pi_ref - 0.1 * kl_r)) * m).sum(1) / m.sum(1)
    surrogate.mean().backward()
    torch.testing.assert_close(pi.grad, pi_ref.grad)

    chunked = GRPOWithChunkedOutputLoss(num_output_chunks=3, kl_coeff=0.1)(
        list(d["logits"].chunk(3, dim=1)), d["targets"], d["ref"], d["adv"], d["mask"]
    )
    simple = GRPOSimpleLoss(kl_coeff=0.1)(d["old"], d["pi"], d["ref"], d["adv"], d["mask"])
    for x, y in zip(chunked[:5], simple, strict=True):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(chunked[5], d["pi"])


def test_torchtune_names_resolve() -> None:
    for name, cls in [("torchtune.dev.grpo.loss.GRPOLoss", GRPOLoss),
                      ("torchtune.dev.grpo.loss.GRPOSimpleLoss", GRPOSimpleLoss),
                      ("torchtune.dev.grpo.loss.GRPOWithChunkedOutputLoss", GRPOWithChunkedOutputLoss),
                      ("torchtune.dev.rl.linear_grpo_loss.LinearGRPOLoss", LinearGRPOLoss)]:  # fmt: skip
        assert resolve_component(name) is cls
    assert (
        resolve_component("torchtune.dev.grpo.loss.GRPOCompletionLoss") is grpo.GRPOCompletionLoss
    )
