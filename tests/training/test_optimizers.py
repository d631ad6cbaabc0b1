"""Optimizer-in-backward equals a normal optimizer; low-bit and bitsandbytes optimizers."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from tunesmith.training.optimizers import (
    OptimizerInBackward,
    bnb_optimizer,
    low_bit_adamw,
    validate_optimizer_in_backward,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)


def _train_reference(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for step in steps:
        x, y = _data(step)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _train_in_backward(model: nn.Module, opt: OptimizerInBackward, steps: range) -> list[float]:
    losses = []
    for step in steps:
        x, y = _data(step)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()  # parameters are updated here
        assert all(p.grad is None for p in model.parameters())  # and gradients freed
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_in_backward_matches_adamw() -> None:
    ref, inbwd = _model(), _model()
    kwargs = {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.95)}
    a = _train_reference(ref, torch.optim.AdamW(ref.parameters(), **kwargs), range(5))
    b = _train_in_backward(
        inbwd, OptimizerInBackward(inbwd.named_parameters(), torch.optim.AdamW, **kwargs), range(5)
    )
    assert b == pytest.approx(a, abs=1e-6)
    for p, q in zip(ref.parameters(), inbwd.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0)


def test_state_dict_resume_continues_identically() -> None:
    straight = _model()
    opt = OptimizerInBackward(straight.named_parameters(), torch.optim.AdamW, lr=1e-2)
    _train_in_backward(straight, opt, range(3))
    saved_model = copy.deepcopy(straight.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    assert set(saved_opt["optimizers"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    tail = _train_in_backward(straight, opt, range(3, 6))

    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = OptimizerInBackward(resumed.named_parameters(), torch.optim.AdamW, lr=1e-2)
    opt2.load_state_dict(saved_opt)
    assert _train_in_backward(resumed, opt2, range(3, 6)) == pytest.approx(tail, abs=1e-7)


def test_load_errors_name_the_problem() -> None:
    opt = OptimizerInBackward(_model().named_parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="optimizer_in_bwd"):
        opt.load_state_dict(torch.optim.SGD(_model().parameters(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"optimizers": {}})


def test_frozen_parameters_are_skipped() -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = OptimizerInBackward(model.named_parameters(), torch.optim.SGD, lr=0.1)
    assert "0.weight" not in opt.optimizers and len(opt.param_groups) == 3


def test_validation_names_config_keys() -> None:
    validate_optimizer_in_backward(1, None)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        validate_optimizer_in_backward(4, None)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        validate_optimizer_in_backward(1, 1.0)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bnb installed")
def test_bnb_missing_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"tunesmith\[bnb\]"):
        bnb_optimizer(_model().parameters(), "PagedAdamW8bit", lr=1e-3)


def test_low_bit_rejects_bad_bits() -> None:
    with pytest.raises(ValueError, match="4 or 8"):
        low_bit_adamw(_model().parameters(), bits=2)


def test_low_bit_on_cpu_without_compiler_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"C\+\+ compiler.*torch.optim.AdamW"):
        low_bit_adamw([{"params": list(_model().parameters())}], bits=8, lr=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_low_bit_adamw_tracks_fp32_adamw_on_cpu(bits: int) -> None:
    """torchao's compiled low-bit AdamW runs on CPU; its update stays close to fp32 AdamW."""
    torch.manual_seed(0)
    ref = nn.Linear(128, 64)  # 8192 weights: above torchao's 4096-element quantisation threshold
    low = copy.deepcopy(ref)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt_low = low_bit_adamw(low.parameters(), bits=bits, lr=1e-2)
    start = ref.weight.detach().clone()
    for step in range(3):
        x = torch.randn(16, 128, generator=torch.Generator().manual_seed(step))
        for m, o in ((ref, opt_ref), (low, opt_low)):
            m(x).pow(2).mean().backward()
            o.step()
            o.zero_grad()
    moved_ref = ref.weight.detach() - start
    moved_low = low.weight.detach() - start
    cos = torch.nn.functional.cosine_similarity(moved_ref.flatten(), moved_low.flatten(), dim=0)
    assert cos > 0.95
    assert type(opt_low.state[low.weight]["exp_avg"]).__name__.startswith("OptimState")
