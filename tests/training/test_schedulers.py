"""LR schedules against Hugging Face transformers' own implementations."""

from __future__ import annotations

import pytest
import torch
from transformers import optimization as hf_opt

from tunesmith.training.lr_schedulers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_lr,
)
from tunesmith.training.optimizers import OptimizerInBackward


def _optimizer(lr: float = 3e-4) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _curve(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(get_lr(scheduler.optimizer))
        scheduler.optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize(
    "warmup,total,cycles", [(0, 10, 0.5), (3, 20, 0.5), (5, 30, 1.5), (10, 10, 0.5)]
)
def test_cosine_matches_transformers(warmup: int, total: int, cycles: float) -> None:
    ours = get_cosine_schedule_with_warmup(_optimizer(), warmup, total, num_cycles=cycles)
    ref = hf_opt.get_cosine_schedule_with_warmup(_optimizer(), warmup, total, num_cycles=cycles)
    a, b = _curve(ours, total + 5), _curve(ref, total + 5)
    assert a == pytest.approx(b, abs=1e-12)
    if warmup:
        assert a[0] == 0.0 and a[warmup] == pytest.approx(3e-4)


@pytest.mark.parametrize("warmup,total", [(0, 10), (4, 12), (12, 12)])
def test_linear_matches_transformers(warmup: int, total: int) -> None:
    a = _curve(get_linear_schedule_with_warmup(_optimizer(), warmup, total), total + 3)
    b = _curve(hf_opt.get_linear_schedule_with_warmup(_optimizer(), warmup, total), total + 3)
    assert a == pytest.approx(b, abs=1e-12)
    assert a[-1] == 0.0


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_constant_with_warmup_matches_transformers(warmup: int) -> None:
    a = _curve(get_constant_schedule_with_warmup(_optimizer(), warmup, num_training_steps=20), 15)
    b = _curve(hf_opt.get_constant_schedule_with_warmup(_optimizer(), warmup), 15)
    assert a == pytest.approx(b, abs=1e-12)


def test_resume_continues_the_same_curve() -> None:
    full = _curve(get_cosine_schedule_with_warmup(_optimizer(), 3, 12), 12)
    first = get_cosine_schedule_with_warmup(_optimizer(), 3, 12)
    head = _curve(first, 5)
    second = get_cosine_schedule_with_warmup(_optimizer(), 3, 12)
    second.load_state_dict(first.state_dict())
    second.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]
    assert head + _curve(second, 7) == pytest.approx(full)


def test_schedule_drives_optimizer_in_backward() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = OptimizerInBackward(model.named_parameters(), torch.optim.SGD, lr=0.1)
    sched = get_linear_schedule_with_warmup(opt, 2, 10)
    ref = _curve(get_linear_schedule_with_warmup(_optimizer(0.1), 2, 10), 6)
    seen = []
    for _ in range(6):
        lrs = {g["lr"] for o in opt.optimizers.values() for g in o.param_groups}
        assert len(lrs) == 1  # every per-parameter optimizer follows the schedule
        seen.append(get_lr(opt))
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        sched.step()
    assert seen == pytest.approx(ref)


def test_bad_arguments_name_the_key() -> None:
    with pytest.raises(ValueError, match="num_warmup_steps"):
        get_cosine_schedule_with_warmup(_optimizer(), -1, 10)
