"""LoRA / DoRA models from our builders equal transformers + peft with the same adapter."""

from __future__ import annotations

import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint
from tunesmith.models import build_decoder, lora_settings, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native, native_to_hf

peft = pytest.importorskip("peft")

_PEFT_SUFFIX = {
    ".lora_a.weight": ".lora_A.weight",
    ".lora_b.weight": ".lora_B.weight",
    ".magnitude": ".lora_magnitude_vector",
}
_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def _to_peft(native_adapter: dict, model_type: str, config: dict) -> dict:
    out = {}
    for key, value in native_to_hf(native_adapter, model_type, config).items():
        for ours, theirs in _PEFT_SUFFIX.items():
            if key.endswith(ours):
                key = key[: -len(ours)] + theirs
        out["base_model.model." + key] = value
    return out


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("family", ["llama3_1", "qwen2_untied"])
def test_adapter_logits_equal_peft(family, use_dora, tmp_path, device):
    hf = make_checkpoint(family, tmp_path)
    config, hf_sd = read_checkpoint(tmp_path)
    spec = spec_from_hf_config(config)
    settings = lora_settings(
        ["q_proj", "k_proj", "v_proj", "output_proj"],
        apply_lora_to_mlp=True,
        apply_lora_to_output=True,
        lora_rank=4,
        lora_alpha=8,
        use_dora=use_dora,
    )
    model = build_decoder(spec, settings).eval()
    missing, unexpected = model.load_state_dict(
        hf_to_native(hf_sd, spec.family, config), strict=False
    )
    assert not unexpected
    torch.manual_seed(3)
    adapter = {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items() if k in missing}
    if use_dora:
        adapter = {k: (v.abs() + 1.0 if k.endswith("magnitude") else v) for k, v in adapter.items()}
    model.load_state_dict(adapter, strict=False)

    peft_cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=_TARGETS, use_dora=use_dora)
    peft_model = peft.get_peft_model(hf, peft_cfg).eval().to(device)
    model.to(device)
    result = peft.set_peft_model_state_dict(peft_model, _to_peft(adapter, spec.family, config))
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]
    tokens = torch.randint(0, VOCAB, (2, 37)).to(device)
    with torch.no_grad():
        expected = peft_model(tokens).logits
        got = model(tokens)
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            base_logits = base(tokens).logits
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - base_logits).abs().max().item() > 1e-2  # the adapter really acts
