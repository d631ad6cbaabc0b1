"""Meta-device build + full-state-dict load equals building for real and loading (issue 18.2):
LoRA / DoRA / QLoRA adapters are drawn from the seed alone, DoRA magnitudes and NF4 weights
match what the module computes itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunesmith.modules.peft.dora import DoRALinear
from tunesmith.modules.peft.lora import LoRALinear
from tunesmith.training.meta_init import (
    initial_adapter_weights,
    load_full_state_dict,
    meta_tensors,
)

pytest.importorskip("torchao")


def _build(quantize: bool) -> nn.Module:
    return nn.Sequential(
        LoRALinear(64, 128, 4, 8.0, quantize_base=quantize),
        DoRALinear(128, 64, 4, 8.0, quantize_base=quantize),
    )


def _base_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "0.weight": torch.randn(128, 64, generator=g),
        "1.weight": torch.randn(64, 128, generator=g),
    }


@pytest.mark.parametrize("quantize", [False, True], ids=["lora_dora", "qlora_qdora"])
def test_meta_build_equals_real_build(quantize: bool) -> None:
    weights = _base_weights()
    with torch.device("meta"):
        meta = _build(quantize)
    fresh = initial_adapter_weights(meta, weights, seed=7)
    assert sorted(fresh) == ["0.lora_a.weight", "0.lora_b.weight", "1.lora_a.weight",
                             "1.lora_b.weight", "1.magnitude"]  # fmt: skip
    again = initial_adapter_weights(_build(quantize), weights, seed=7)  # a real module: same
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)
    assert not torch.equal(fresh["0.lora_a.weight"], initial_adapter_weights(meta, weights, 8)[
        "0.lora_a.weight"])  # fmt: skip
    load_full_state_dict(meta, {**weights, **fresh}, "cpu")
    assert not meta_tensors(meta)

    real = _build(quantize)  # the old way: build for real, load, let DoRA compute its magnitude
    real.load_state_dict({**weights, **{k: v for k, v in fresh.items() if "magnitude" not in k}},
                         strict=False)  # fmt: skip
    real[1].initialize_dora_magnitude()
    torch.testing.assert_close(meta[1].magnitude, real[1].magnitude, atol=0, rtol=0)
    for i in range(2):
        assert type(meta[i].weight.data) is type(real[i].weight.data)
        if quantize:
            assert torch.equal(
                meta[i].weight.get_original_weight(), real[i].weight.get_original_weight()
            )
    assert [n for n, p in meta.named_parameters() if p.requires_grad] == [
        n for n, p in real.named_parameters() if p.requires_grad
    ]
    x = torch.randn(3, 64)
    torch.testing.assert_close(meta(x), real(x), atol=0, rtol=0)


def test_load_refuses_wrong_shapes_and_leftovers() -> None:
    with torch.device("meta"):
        model = nn.Linear(4, 3)
    with pytest.raises(RuntimeError, match=r"shape \(3, 5\) in the checkpoint, \(3, 4\)"):
        load_full_state_dict(model, {"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}, "cpu")
    with torch.device("meta"):
        model = nn.Linear(4, 3)
    with pytest.raises(RuntimeError, match="missing \\['bias'\\]"):
        load_full_state_dict(model, {"weight": torch.zeros(3, 4)}, "cpu")
    source = {"weight": torch.ones(3, 4), "bias": torch.zeros(3)}
    with torch.device("meta"):
        model = nn.Linear(4, 3)
    load_full_state_dict(model, source, "cpu")
    model.weight.data.add_(1)
    assert torch.equal(source["weight"], torch.ones(3, 4))  # the checkpoint is never aliased
