"""Our LoRA / DoRA adapters, exported in PEFT format, load in ``peft`` with equal logits.

Reference: Hugging Face ``transformers`` models with adapters attached by ``peft`` (0.21).
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint
from tunesmith.models import build_from_hf, model_type_of, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native
from tunesmith.models.peft_format import (
    load_peft_adapter,
    native_to_peft,
    peft_adapter_config,
    peft_to_native,
    save_peft_adapter,
    target_modules_from_adapter,
)
from tunesmith.modules.peft import (
    get_adapter_params,
    get_adapter_state_dict,
    load_dora_magnitudes,
    validate_missing_and_unexpected_for_lora,
)

peft = pytest.importorskip("peft")

ALL_ATTN = ["q_proj", "k_proj", "v_proj", "output_proj"]
RANK, ALPHA = 4, 8.0


def _our_lora_model(config: dict, hf_sd: dict, *, use_dora: bool, output: bool = True):
    """Our LoRA model on the checkpoint's base weights, with random nonzero adapters."""
    model = build_from_hf(
        config,
        lora_attn_modules=ALL_ATTN,
        apply_lora_to_mlp=True,
        apply_lora_to_output=output,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        use_dora=use_dora,
    ).eval()
    base = hf_to_native(hf_sd, model_type_of(spec_from_hf_config(config)), config)
    missing, unexpected = model.load_state_dict(base, strict=False)
    validate_missing_and_unexpected_for_lora(
        state_dict_keys=list(model.state_dict()), base_missing=missing, base_unexpected=unexpected
    )
    load_dora_magnitudes(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in get_adapter_params(model).items():
            if name.endswith("lora_b.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("magnitude"):
                p.mul_(1.0 + 0.2 * torch.rand(p.shape, generator=g))
    return model


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "family,use_dora",
    [("llama3_1", False), ("llama3_1", True), ("qwen2_untied", True), ("gemma2", False)],
)
def test_exported_adapter_loads_in_peft_with_equal_logits(tmp_path, family, use_dora):
    hf = make_checkpoint(family, tmp_path / "base")
    config, hf_sd = read_checkpoint(tmp_path / "base")
    spec = spec_from_hf_config(config)
    model_type = model_type_of(spec)
    ours = _our_lora_model(config, hf_sd, use_dora=use_dora, output=not spec.tie_embeddings)

    adapter = get_adapter_state_dict(ours.state_dict())
    written = save_peft_adapter(
        tmp_path / "adapter",
        adapter,
        model_type=model_type,
        rank=RANK,
        alpha=ALPHA,
        hf_config=config,
        base_model_name_or_path=str(tmp_path / "base"),
    )
    assert written["use_dora"] is use_dora
    targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(written["target_modules"]) == targets | (
        set() if spec.tie_embeddings else {"lm_head"}
    )

    reference = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    tokens = _tokens()
    with torch.no_grad():
        want = reference(tokens).logits
        got = ours(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    # PEFT -> native round trip is exact, key for key
    native, config_back = load_peft_adapter(tmp_path / "adapter", model_type, config)
    assert config_back["r"] == RANK and config_back["lora_alpha"] == ALPHA
    assert native.keys() == adapter.keys()
    assert all(torch.equal(native[k], adapter[k]) for k in adapter)


_PEFT_TARGETS = {
    "llama3_1": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],  # fused projections
}


@pytest.mark.parametrize(
    "family,use_dora", [("llama3_1", False), ("llama3_1", True), ("phi3", True)]
)
def test_peft_trained_adapter_loads_into_our_model(tmp_path, family, use_dora):
    """An adapter made and saved by PEFT itself -> native -> our model: equal logits."""
    hf = make_checkpoint(family, tmp_path / "base")
    config, hf_sd = read_checkpoint(tmp_path / "base")
    model_type = model_type_of(spec_from_hf_config(config))
    targets = _PEFT_TARGETS[family]
    lora_config = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=targets, use_dora=use_dora
    )
    reference = peft.get_peft_model(hf, lora_config).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
            elif "lora_magnitude_vector" in name:
                p.mul_(1.1)
    reference.save_pretrained(tmp_path / "adapter")

    native, _ = load_peft_adapter(tmp_path / "adapter", model_type, config)
    ours = _our_lora_model(config, hf_sd, use_dora=use_dora, output=False)
    missing, unexpected = ours.load_state_dict(native, strict=False)
    validate_missing_and_unexpected_for_lora(
        state_dict_keys=list(ours.state_dict()), lora_missing=missing, lora_unexpected=unexpected
    )
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference(tokens).logits, atol=1e-5, rtol=0)


def test_phi3_fused_projections_round_trip():
    """Phi-3's qkv_proj / gate_up_proj: one shared lora_A, lora_B and magnitude concatenated."""
    config = {
        "model_type": "phi3", "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_size": 64,
    }  # fmt: skip
    g = torch.Generator().manual_seed(4)
    shared_a = torch.randn(RANK, 64, generator=g)
    rows = {"q_proj": 64, "k_proj": 32, "v_proj": 32}
    native = {}
    for name, out in rows.items():
        native[f"layers.0.attn.{name}.lora_a.weight"] = shared_a
        native[f"layers.0.attn.{name}.lora_b.weight"] = torch.randn(out, RANK, generator=g)
        native[f"layers.0.attn.{name}.magnitude"] = torch.rand(out, generator=g)
    peft_sd = native_to_peft(native, "PHI3_MINI", config)
    prefix = "base_model.model.model.layers.0.self_attn.qkv_proj."
    assert set(peft_sd) == {
        prefix + "lora_A.weight", prefix + "lora_B.weight", prefix + "lora_magnitude_vector"
    }  # fmt: skip
    assert peft_sd[prefix + "lora_B.weight"].shape == (128, RANK)
    back = peft_to_native(peft_sd, "PHI3_MINI", config)
    assert back.keys() == native.keys()
    assert all(torch.equal(back[k], native[k]) for k in native)
    assert target_modules_from_adapter(peft_sd) == ["qkv_proj"]


def test_key_names_and_config():
    native = {
        "layers.0.attn.q_proj.lora_a.weight": torch.zeros(2, 8),
        "layers.0.attn.q_proj.lora_b.weight": torch.zeros(8, 2),
        "layers.1.mlp.w1.magnitude": torch.zeros(16),
        "output.lora_a.weight": torch.zeros(2, 8),
    }
    keys = set(native_to_peft(native, "LLAMA3_2"))
    assert keys == {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        "base_model.model.model.layers.1.mlp.gate_proj.lora_magnitude_vector",
        "base_model.model.lm_head.lora_A.weight",
    }
    config = peft_adapter_config(
        "LLAMA3_2", "meta-llama/Llama-3.2-1B", rank=8, alpha=16, dropout=0.05,
        target_modules=["v_proj", "q_proj"], use_dora=True,
    )  # fmt: skip
    parsed = peft.LoraConfig(**{k: v for k, v in config.items() if k != "peft_type"})
    assert parsed.r == 8 and parsed.lora_alpha == 16 and parsed.use_dora
    assert set(parsed.target_modules) == {"q_proj", "v_proj"}
    assert json.loads(json.dumps(config)) == config
    with pytest.raises(ValueError, match="not a LoRA/DoRA adapter key"):
        native_to_peft({"layers.0.attn.q_proj.weight": torch.zeros(1)}, "LLAMA3")
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        peft_to_native(
            {"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 8)},
            "QWEN2",
            {"tie_word_embeddings": True},
        )
    with pytest.raises(ValueError, match="modules_to_save"):
        peft_to_native(
            {"base_model.model.lm_head.modules_to_save.weight": torch.zeros(1)}, "LLAMA3"
        )


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_whole_model_fresh_adapter_is_base_and_merge_is_exact(tmp_path, use_dora):
    """B = 0 -> logits identical to the base model; merged == unmerged (<= 1e-5)."""
    from tunesmith.models import build_decoder
    from tunesmith.modules.peft import get_merged_lora_ckpt, merge_lora_weights

    make_checkpoint("qwen2_untied", tmp_path)
    config, hf_sd = read_checkpoint(tmp_path)
    spec = spec_from_hf_config(config)
    base = build_decoder(spec).eval()
    native = hf_to_native(hf_sd, model_type_of(spec), config)
    base.load_state_dict(native)
    fresh = build_from_hf(
        config, lora_attn_modules=ALL_ATTN, apply_lora_to_mlp=True, apply_lora_to_output=True,
        lora_rank=RANK, lora_alpha=ALPHA, use_dora=use_dora,
    ).eval()  # fmt: skip
    fresh.load_state_dict(native, strict=False)
    load_dora_magnitudes(fresh)
    tokens = _tokens()
    with torch.no_grad():
        want = base(tokens)
        assert (fresh(tokens) - want).abs().max() <= (1e-6 if use_dora else 0.0)

        adapted = _our_lora_model(config, hf_sd, use_dora=use_dora)
        logits = adapted(tokens)
        assert (logits - want).abs().max() > 1e-3  # the adapter does something
        merged_sd = get_merged_lora_ckpt(dict(adapted.state_dict()), rank=RANK, alpha=ALPHA)
        base.load_state_dict(merged_sd)  # strict: a plain model's keys exactly
        torch.testing.assert_close(base(tokens), logits, atol=1e-5, rtol=0)
        merge_lora_weights(adapted)
        torch.testing.assert_close(adapted(tokens), logits, atol=1e-5, rtol=0)
