"""fp16 trains with dynamic loss scaling (issue 18.7): an overflowing step is skipped and the
scale halves; clean steps grow it back; unscaled gradients are the true gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunesmith.config import ConfigError
from tunesmith.training.precision import DynamicLossScaler, loss_scaler


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def _loss(model: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    return model(x).float().pow(2).mean()


def test_unscaled_gradients_are_the_true_gradients() -> None:
    ref, model = _model(), _model()
    _loss(ref).backward()
    scaler = DynamicLossScaler(init_scale=2.0**10)
    scaler.scale(_loss(model)).backward()
    assert not scaler.unscale_(model.parameters())
    for a, b in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0)  # powers of two are exact


def test_overflow_skips_the_step_and_halves_the_scale_then_grows() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=2)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(_loss(model)).backward()
    next(iter(model.parameters())).grad[0, 0] = float("inf")  # an fp16 overflow
    assert scaler.unscale_(model.parameters())
    assert scaler.step(opt) is False
    assert scaler.scale_value == 512.0 and scaler.skipped_steps == 1
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    for expected in (512.0, 1024.0):  # two clean steps: the scale doubles after the second
        opt.zero_grad()
        scaler.scale(_loss(model)).backward()
        assert not scaler.unscale_(model.parameters())
        assert scaler.step(opt) is True
        assert scaler.scale_value == expected
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.step(opt)
    state = scaler.state_dict()
    again = DynamicLossScaler()
    again.load_state_dict(state)
    assert again.scale_value == 1024.0


def test_fp16_parameters_train_on_this_device() -> None:
    """Real fp16 parameters and gradients (CPU has fp16 kernels in torch >= 2.1); the scaled
    fp16 gradients overflow at first, the scaler backs off, then steps."""
    model = _model(torch.float16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = DynamicLossScaler(init_scale=2.0**24)  # large enough to overflow fp16 grads
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = _loss(model, torch.float16)
        scaler.scale(loss).backward()
        scaler.unscale_(model.parameters())
        scaler.step(opt)
        losses.append(loss.item())
    assert scaler.skipped_steps >= 1 and scaler.scale_value < 2.0**24
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert losses[-1] < losses[0]


def test_only_fp16_gets_a_scaler_and_not_with_optimizer_in_backward() -> None:
    assert loss_scaler(torch.bfloat16, False) is None and loss_scaler(torch.float32, True) is None
    assert isinstance(loss_scaler(torch.float16, False), DynamicLossScaler)
    with pytest.raises(ConfigError, match="optimizer_in_bwd=True steps inside backward"):
        loss_scaler(torch.float16, True)
