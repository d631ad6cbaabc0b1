"""LoRALinear / DoRALinear against Hugging Face PEFT's LoRA and DoRA layers (the reference)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunesmith.modules.peft import DoRALinear, LoRALinear, get_merged_lora_ckpt

peft = pytest.importorskip("peft")


class _OneLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, use_bias: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _pair(
    use_bias: bool, use_dora: bool, dropout: float = 0.0, in_dim: int = 24, out_dim: int = 40
) -> tuple[nn.Module, LoRALinear, nn.Module]:
    """``(peft_model, ours, peft_layer)`` with identical random weights (nonzero B)."""
    torch.manual_seed(0)
    rank, alpha = 4, 12.0
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=["proj"], use_dora=use_dora
    )
    reference = peft.get_peft_model(_OneLinear(in_dim, out_dim, use_bias), config)
    layer = reference.base_model.model.proj
    cls = DoRALinear if use_dora else LoRALinear
    ours = cls(in_dim, out_dim, rank, alpha, dropout=dropout, use_bias=use_bias)
    with torch.no_grad():
        nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
        ours.weight.copy_(layer.base_layer.weight)
        if use_bias:
            ours.bias.copy_(layer.base_layer.bias)
        ours.lora_a.weight.copy_(layer.lora_A["default"].weight)
        ours.lora_b.weight.copy_(layer.lora_B["default"].weight)
        if use_dora:
            magnitude = torch.rand(out_dim) + 0.5
            layer.lora_magnitude_vector["default"].weight.copy_(magnitude)
            ours.magnitude.copy_(magnitude)
    return reference, ours, layer


def _adapter_grads(module: LoRALinear, layer: nn.Module, use_dora: bool) -> list[tuple]:
    pairs = [
        (module.lora_a.weight.grad, layer.lora_A["default"].weight.grad),
        (module.lora_b.weight.grad, layer.lora_B["default"].weight.grad),
    ]
    if use_dora:
        pairs.append((module.magnitude.grad, layer.lora_magnitude_vector["default"].weight.grad))
    return pairs


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("use_bias", [False, True], ids=["nobias", "bias"])
def test_forward_and_grads_match_peft(use_dora: bool, use_bias: bool) -> None:
    reference, ours, layer = _pair(use_bias, use_dora)
    x = torch.randn(2, 5, 24)
    want = reference(x)
    got = ours(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    want.square().sum().backward()
    got.square().sum().backward()
    for g, w in _adapter_grads(ours, layer, use_dora):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_training_with_dropout_matches_peft(use_dora: bool) -> None:
    """Same dropout mask (same RNG state) -> same output, incl. DoRA's dropout-path rescaling."""
    reference, ours, _ = _pair(True, use_dora, dropout=0.3)
    reference.train()
    ours.train()
    x = torch.randn(3, 24)
    torch.manual_seed(7)
    want = reference(x)
    torch.manual_seed(7)
    got = ours(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    reference.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merge_matches_peft_merge_and_unload(use_dora: bool) -> None:
    reference, ours, _ = _pair(True, use_dora)
    merged_reference = reference.merge_and_unload()
    want = merged_reference.proj.weight
    torch.testing.assert_close(ours.merged_weight(), want, atol=1e-5, rtol=0)
    merged_sd = get_merged_lora_ckpt(dict(ours.state_dict()), rank=4, alpha=12.0)
    assert set(merged_sd) == {"weight", "bias"}
    torch.testing.assert_close(merged_sd["weight"], want, atol=1e-5, rtol=0)


def test_fresh_dora_magnitude_equals_peft_initialisation() -> None:
    """Both initialise m = ||W + s B A|| row-wise; with B = 0 that is ||W||."""
    torch.manual_seed(3)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], use_dora=True)
    reference = peft.get_peft_model(_OneLinear(16, 8, False), config)
    layer = reference.base_model.model.proj
    ours = DoRALinear(16, 8, 4, 8.0)
    with torch.no_grad():
        ours.weight.copy_(layer.base_layer.weight)
    ours.initialize_dora_magnitude()
    want = layer.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(ours.magnitude, want, atol=1e-6, rtol=0)
