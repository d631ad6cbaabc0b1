"""Saving a QLoRA model dequantizes its NF4 base weights one at a time (issue 18.6): each is
moved off the accelerator as soon as it is made, so at most one lives there at once."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from tunesmith.modules.peft.lora import LoRALinear
from tunesmith.training.distributed import gather_cpu_state_dict, state_dict_on

pytest.importorskip("torchao")


def _qlora(n: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[LoRALinear(64, 128, 4, 8, quantize_base=True) for _ in range(n)])


def test_at_most_one_dequantized_weight_lives_on_the_source_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``meta`` stands in for "off the accelerator": a dequantized weight still alive when the
    next one is made would be a second full weight on the GPU."""
    from tunesmith.modules.peft._nf4 import _nf4_api

    nf4_cls = _nf4_api()[0]
    real = nf4_cls.get_original_weight
    alive: list[weakref.ref] = []
    peak = [0]

    def tracked(self: torch.Tensor) -> torch.Tensor:
        out = real(self)
        alive.append(weakref.ref(out))
        peak[0] = max(peak[0], sum(r() is not None for r in alive))
        return out

    monkeypatch.setattr(nf4_cls, "get_original_weight", tracked)
    model = _qlora()
    sd = state_dict_on(model, torch.device("meta"))
    assert len(alive) == 4 and peak[0] == 1
    assert all(v.is_meta for v in sd.values())
    assert sorted(sd) == sorted(model.state_dict())


def test_gathered_cpu_state_dict_is_plain_and_exact() -> None:
    model = _qlora(2)
    sd = gather_cpu_state_dict(model, is_rank_zero=True)
    for i in range(2):
        weight = sd[f"{i}.weight"]
        assert type(weight) is torch.Tensor and weight.device.type == "cpu"
        assert torch.equal(weight, model[i].weight.get_original_weight())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_is_one_dequantized_weight() -> None:
    model = _qlora(8).cuda()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    gather_cpu_state_dict(model, is_rank_zero=True)
    one = 64 * 128 * 4  # one fp32 dequantized weight, bytes
    assert torch.cuda.max_memory_allocated() - before <= 2 * one
