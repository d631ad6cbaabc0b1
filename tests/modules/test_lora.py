"""LoRALinear, QLoRA (NF4 base) and the adapter helpers of tunesmith.modules.peft."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.peft import (
    AdapterModule,
    DoRALinear,
    LoRALinear,
    disable_adapter,
    get_adapter_params,
    get_adapter_state_dict,
    get_merged_lora_ckpt,
    merge_lora_weights,
    set_trainable_params,
    validate_missing_and_unexpected_for_lora,
)


class _Block(nn.Module):
    """A tiny model shaped like a decoder layer: LoRA on q/v, plain k, a LoRA output."""

    def __init__(self, quantize_base: bool = False, dora: bool = False) -> None:
        super().__init__()
        cls = DoRALinear if dora else LoRALinear
        self.q_proj = cls(64, 64, rank=4, alpha=8.0, quantize_base=quantize_base)
        self.k_proj = nn.Linear(64, 64, bias=False)
        self.v_proj = cls(64, 32, rank=4, alpha=8.0, use_bias=True, quantize_base=quantize_base)
        self.output = cls(32, 128, rank=4, alpha=8.0, quantize_base=quantize_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(F.silu(self.v_proj(self.q_proj(x) + self.k_proj(x))))


def _randomise_adapters(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in get_adapter_params(model).items():
            if name.endswith("lora_b.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_state_dict_keys_shapes_and_init(device) -> None:
    lora = LoRALinear(48, 80, rank=8, alpha=16.0, use_bias=True).to(device)
    shapes = {k: tuple(v.shape) for k, v in lora.state_dict().items()}
    assert shapes == {
        "weight": (80, 48),
        "bias": (80,),
        "lora_a.weight": (8, 48),
        "lora_b.weight": (80, 8),
    }
    assert lora.scaling == 2.0
    assert torch.count_nonzero(lora.lora_b.weight) == 0
    # kaiming_uniform(a=sqrt(5)) on [rank, in] -> U(-1/sqrt(in), 1/sqrt(in)), as in PEFT
    bound = 1 / math.sqrt(48)
    assert lora.lora_a.weight.abs().max() <= bound
    assert lora.lora_a.weight.abs().max() > 0.8 * bound
    assert not lora.weight.requires_grad and not lora.bias.requires_grad
    assert isinstance(lora, AdapterModule)


def test_fresh_adapter_equals_base_linear(device) -> None:
    lora = LoRALinear(48, 80, rank=8, alpha=16.0, use_bias=True).to(device)
    x = torch.randn(2, 7, 48, device=device)
    assert torch.equal(lora(x), F.linear(x, lora.weight, lora.bias))


def test_forward_formula_with_nonzero_b(device) -> None:
    lora = LoRALinear(16, 24, rank=4, alpha=6.0).to(device)
    nn.init.normal_(lora.lora_b.weight)
    x = torch.randn(5, 16, device=device)
    want = x @ lora.weight.T + 1.5 * (x @ lora.lora_a.weight.T) @ lora.lora_b.weight.T
    torch.testing.assert_close(lora(x), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merged_model_equals_unmerged(dora: bool, device) -> None:
    torch.manual_seed(0)
    model = _Block(dora=dora).to(device)
    _randomise_adapters(model)
    x = torch.randn(3, 5, 64, device=device)
    want = model(x)
    merged_sd = get_merged_lora_ckpt(
        {k: v.clone() for k, v in model.state_dict().items()}, rank=4, alpha=8.0
    )
    assert not any("lora" in k or "magnitude" in k for k in merged_sd)

    plain = _Block(dora=dora).to(device)
    merge_lora_weights(plain)
    assert all(type(m) is nn.Linear for m in (plain.q_proj, plain.v_proj, plain.output))
    plain.load_state_dict(merged_sd)  # merged checkpoint == a plain model's keys
    torch.testing.assert_close(plain(x), want, atol=1e-5, rtol=0)

    merge_lora_weights(model)
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=0)
    assert set(model.state_dict()) == set(merged_sd)


def test_adapter_params_trainable_and_adapter_state_dict(device) -> None:
    model = _Block(dora=False).to(device)
    params = get_adapter_params(model)
    assert set(params) == {
        f"{m}.lora_{ab}.weight" for m in ("q_proj", "v_proj", "output") for ab in "ab"
    }
    set_trainable_params(model, params)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(params)
    model(torch.randn(2, 64, device=device)).sum().backward()
    assert model.k_proj.weight.grad is None and model.q_proj.weight.grad is None
    assert all(p.grad is not None for p in params.values())
    assert set(get_adapter_state_dict(model.state_dict())) == set(params)

    dora_params = get_adapter_params(_Block(dora=True).to(device))
    assert {k for k in dora_params if k.endswith("magnitude")} == {
        "q_proj.magnitude",
        "v_proj.magnitude",
        "output.magnitude",
    }


def test_disable_adapter_gives_base_model(device) -> None:
    torch.manual_seed(1)
    model = _Block().to(device)
    _randomise_adapters(model)
    x = torch.randn(2, 64, device=device)
    adapted = model(x)
    base = model.output.weight @ F.silu(
        model.v_proj.weight @ (model.q_proj.weight @ x.T + model.k_proj.weight @ x.T)
        + model.v_proj.bias[:, None]
    )
    with disable_adapter(model):
        torch.testing.assert_close(model(x), base.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(x), adapted)


@pytest.mark.parametrize("dora", [False, True], ids=["qlora", "qdora"])
def test_nf4_base_forward_backward_and_checkpoint(dora: bool, device) -> None:
    torch.manual_seed(2)
    reference = _Block(dora=dora).to(device)
    _randomise_adapters(reference)
    sd = reference.state_dict()
    quantized = _Block(quantize_base=True, dora=dora).to(device)
    quantized.load_state_dict(sd)  # plain tensors are re-quantized on load
    assert type(quantized.q_proj.weight).__name__ == "NF4Tensor"

    x = torch.randn(4, 64, requires_grad=True, device=device)
    got = quantized(x)
    # Forward equals the same module on the dequantized weights...
    dequantized = _Block(dora=dora).to(device)
    dequantized.load_state_dict(quantized.state_dict())
    torch.testing.assert_close(got, dequantized(x), atol=1e-5, rtol=1e-5)
    # ... and stays close to the unquantized original (NF4 error is a few percent).
    want = reference(x)
    assert (got - want).norm() / want.norm() < 0.1

    saved = quantized.state_dict()
    assert all(type(v) is torch.Tensor for v in saved.values())
    assert saved["q_proj.weight"].dtype == torch.float32
    set_trainable_params(quantized, get_adapter_params(quantized))
    got.sum().backward()
    assert x.grad is not None and quantized.q_proj.lora_a.weight.grad is not None

    merge_lora_weights(quantized)
    torch.testing.assert_close(quantized(x), got, atol=1e-5, rtol=1e-5)


def test_nf4_bf16_base_saves_bf16(device) -> None:
    lora = LoRALinear(64, 64, rank=2, alpha=4.0, quantize_base=True).to(device, torch.bfloat16)
    assert lora.state_dict()["weight"].dtype == torch.bfloat16
    x = torch.randn(3, 64, dtype=torch.bfloat16, device=device)
    assert lora(x).dtype == torch.bfloat16


def test_validate_missing_and_unexpected_for_lora() -> None:
    keys = list(_Block().state_dict())
    base_keys = [k for k in keys if "lora" not in k]
    adapter_keys = [k for k in keys if "lora" in k]
    # loading base weights misses only adapter keys; loading the adapter misses only base keys
    validate_missing_and_unexpected_for_lora(
        state_dict_keys=keys, base_missing=adapter_keys, lora_missing=base_keys
    )
    validate_missing_and_unexpected_for_lora(
        lora_attn_modules=["q_proj", "v_proj"],
        apply_lora_to_mlp=False,
        apply_lora_to_output=True,
        base_missing=adapter_keys,
        base_unexpected=[],
    )
    with pytest.raises(RuntimeError, match="k_proj.weight"):
        validate_missing_and_unexpected_for_lora(
            state_dict_keys=keys, base_missing=adapter_keys + ["k_proj.weight"]
        )
    with pytest.raises(RuntimeError, match="q_proj.lora_a.weight"):
        validate_missing_and_unexpected_for_lora(
            state_dict_keys=keys, lora_missing=["q_proj.lora_a.weight"]
        )
    with pytest.raises(RuntimeError, match="unexpected key 'foo'"):
        validate_missing_and_unexpected_for_lora(state_dict_keys=keys, base_unexpected=["foo"])


def test_bad_arguments_name_the_setting() -> None:
    with pytest.raises(ValueError, match="lora_rank"):
        LoRALinear(8, 8, rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="lora_dropout"):
        LoRALinear(8, 8, rank=2, alpha=1.0, dropout=1.5)
    with pytest.raises(ValueError, match="multiple of 64"):
        LoRALinear(5, 7, rank=2, alpha=1.0, quantize_base=True)


def test_nf4_gradients_equal_dequantized_lora(device) -> None:
    torch.manual_seed(4)
    quantized = LoRALinear(64, 128, rank=4, alpha=8.0, quantize_base=True).to(device)
    nn.init.normal_(quantized.lora_b.weight)
    plain = LoRALinear(64, 128, rank=4, alpha=8.0).to(device)
    plain.load_state_dict(quantized.state_dict())  # the dequantized NF4 weight
    x = torch.randn(2, 3, 64, requires_grad=True, device=device)
    x_plain = x.detach().clone().requires_grad_(True)
    quantized(x).square().sum().backward()
    plain(x_plain).square().sum().backward()
    torch.testing.assert_close(x.grad, x_plain.grad, atol=1e-5, rtol=1e-5)
    for name in ("lora_a", "lora_b"):
        got = getattr(quantized, name).weight.grad
        torch.testing.assert_close(got, getattr(plain, name).weight.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_runs_under_bf16_autocast(cls: type, device) -> None:
    """fp32 adapters under CPU bf16 autocast: the in-place update casts its operands."""
    torch.manual_seed(5)
    layer = cls(64, 64, rank=4, alpha=8.0).to(device)
    nn.init.normal_(layer.lora_b.weight, std=0.1)
    x = torch.randn(3, 64, requires_grad=True, device=device)
    want = layer(x)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = layer(x)
    got.float().sum().backward()
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.02)
    assert layer.lora_b.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_nf4_block_sizes_reach_torchao(cls: type) -> None:
    """torchtune's ``quantization_kwargs``: the NF4 base is quantized with the given block
    sizes (and equals torchao's own ``to_nf4`` of the same weight); without quantize_base they
    are refused in one line."""
    from tunesmith.modules.peft._nf4 import _nf4_api

    torch.manual_seed(0)
    layer = cls(64, 32, rank=4, alpha=8, quantize_base=True, block_size=32, scaler_block_size=4)
    assert (layer.weight.block_size, layer.weight.scaler_block_size) == (32, 4)
    torch.manual_seed(0)
    base = nn.Linear(64, 32, bias=False).weight.detach()  # the layer draws its base first
    _, to_nf4, _ = _nf4_api()
    expected = to_nf4(base, 32, 4).get_original_weight()
    assert torch.equal(layer.weight.get_original_weight(), expected)
    with pytest.raises(ValueError, match="``quantize_base`` is False, but received the follow"):
        cls(64, 32, rank=4, alpha=8, block_size=32)


def test_dora_magnitude_on_meta_is_refused() -> None:
    with torch.device("meta"):
        layer = DoRALinear(64, 64, rank=4, alpha=8)  # building on meta is fine
    with pytest.raises(RuntimeError, match="Cannot initialize DoRA magnitude"):
        layer.initialize_dora_magnitude()
