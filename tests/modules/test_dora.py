"""DoRALinear: identity at init, the paper's formula, magnitude initialisation, merging."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.peft import DoRALinear, get_merged_lora_ckpt, load_dora_magnitudes


def test_keys_and_fresh_adapter_is_identity(device) -> None:
    dora = DoRALinear(32, 48, rank=4, alpha=8.0, use_bias=True).to(device)
    shapes = {k: tuple(v.shape) for k, v in dora.state_dict().items()}
    assert shapes == {
        "weight": (48, 32),
        "bias": (48,),
        "lora_a.weight": (4, 32),
        "lora_b.weight": (48, 4),
        "magnitude": (48,),
    }
    assert dora.adapter_params() == ["lora_a.weight", "lora_b.weight", "magnitude"]
    x = torch.randn(3, 6, 32, device=device)
    torch.testing.assert_close(dora(x), F.linear(x, dora.weight, dora.bias), atol=1e-6, rtol=0)


def test_forward_is_magnitude_times_normalised_weight(device) -> None:
    """W' = m * (W + s B A) / ||W + s B A|| row-wise (DoRA paper, eq. 5)."""
    torch.manual_seed(0)
    dora = DoRALinear(16, 24, rank=4, alpha=2.0, use_bias=True).to(device)
    with torch.no_grad():
        nn.init.normal_(dora.lora_b.weight)
        dora.magnitude.uniform_(0.5, 2.0)
    combined = dora.weight + 0.5 * dora.lora_b.weight @ dora.lora_a.weight
    adapted = dora.magnitude[:, None] * combined / combined.norm(dim=1, keepdim=True)
    x = torch.randn(5, 16, device=device)
    torch.testing.assert_close(dora(x), F.linear(x, adapted, dora.bias), atol=1e-5, rtol=0)
    torch.testing.assert_close(dora.merged_weight(), adapted.detach(), atol=1e-5, rtol=0)


def test_norm_is_detached(device) -> None:
    """As in the paper (sec. 4.3) the norm gets no gradient: d out / d m = out / m."""
    torch.manual_seed(1)
    dora = DoRALinear(8, 4, rank=2, alpha=2.0).to(device)
    nn.init.normal_(dora.lora_b.weight)
    x = torch.randn(1, 8, device=device)
    out = dora(x)
    out.sum().backward()
    torch.testing.assert_close(dora.magnitude.grad, (out / dora.magnitude).squeeze(0).detach())


def test_initialize_magnitude_after_loading_base_weights(device) -> None:
    torch.manual_seed(2)
    model = nn.ModuleDict({"proj": DoRALinear(16, 8, rank=2, alpha=4.0)}).to(device)
    new_base = torch.randn(8, 16, device=device)
    missing, unexpected = model.load_state_dict({"proj.weight": new_base}, strict=False)
    assert sorted(missing) == ["proj.lora_a.weight", "proj.lora_b.weight", "proj.magnitude"]
    assert not unexpected
    load_dora_magnitudes(model)
    torch.testing.assert_close(model["proj"].magnitude, new_base.norm(dim=1))
    x = torch.randn(3, 16, device=device)
    torch.testing.assert_close(model["proj"](x), x @ new_base.T, atol=1e-5, rtol=0)


def test_merged_checkpoint_drops_adapter_keys_and_matches_forward(device) -> None:
    torch.manual_seed(3)
    dora = DoRALinear(16, 8, rank=2, alpha=4.0, use_bias=True).to(device)
    with torch.no_grad():
        nn.init.normal_(dora.lora_b.weight)
        dora.magnitude.mul_(1.5)
    sd = {f"layers.0.attn.q_proj.{k}": v.clone() for k, v in dora.state_dict().items()}
    merged = get_merged_lora_ckpt(sd, rank=2, alpha=4.0)
    assert set(merged) == {"layers.0.attn.q_proj.weight", "layers.0.attn.q_proj.bias"}
    x = torch.randn(4, 16, device=device)
    want = dora(x)
    got = F.linear(x, merged["layers.0.attn.q_proj.weight"], merged["layers.0.attn.q_proj.bias"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_bf16_merge_is_done_in_fp32(device) -> None:
    torch.manual_seed(4)
    dora = DoRALinear(64, 64, rank=4, alpha=8.0).to(device, torch.bfloat16)
    nn.init.normal_(dora.lora_b.weight)
    merged = dora.merged_weight()
    assert merged.dtype == torch.bfloat16
    w = dora.weight.float() + 2.0 * dora.lora_b.weight.float() @ dora.lora_a.weight.float()
    want = (dora.magnitude.float()[:, None] * w / w.norm(dim=1, keepdim=True)).bfloat16()
    torch.testing.assert_close(merged, want, atol=0, rtol=0)
