"""Per-expert LoRA (``LoRAGroupedExperts``): unmerged native logits equal PEFT's
``target_parameters`` LoRA on transformers' fused experts (Qwen3-MoE, Mixtral), merged weights
equal the adapted model, grouped matmuls equal the loop, PEFT -> native -> PEFT is exact."""

from __future__ import annotations

import pytest
import torch

from tests.models._tiny_hf import read_checkpoint, tiny_configs

peft = pytest.importorskip("peft")

FAMILIES = {"qwen3_moe": "QWEN3_MOE", "mixtral": "MIXTRAL"}


def _checkpoint(name: str, folder):
    """A tiny random model with every layer MoE (see ``test_dense_mlp_lora_next_to_experts``)."""
    import transformers

    config = tiny_configs()[name]
    config.mlp_only_layers = []
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    cls = (
        transformers.Qwen3MoeForCausalLM if name == "qwen3_moe" else transformers.MixtralForCausalLM
    )
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    return model


def _native_lora_model(folder, model_type: str):
    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native
    from tunesmith.modules.peft import get_adapter_params

    config, sd = read_checkpoint(folder)
    model = build_from_hf(
        folder,
        lora_attn_modules=["q_proj", "v_proj"],
        apply_lora_to_mlp=True,
        lora_rank=4,
        lora_alpha=8.0,
    ).eval()
    missing, unexpected = model.load_state_dict(hf_to_native(sd, model_type, config), strict=False)
    assert not unexpected and all("lora" in k for k in missing)
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B everywhere, so every adapter changes the logits
        for p in get_adapter_params(model).values():
            p.normal_(0.0, 0.2)
    return model, config


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_expert_adapter_loads_in_peft_with_equal_logits(name, tmp_path):
    from tunesmith.models.peft_format import load_peft_adapter, save_peft_adapter
    from tunesmith.modules.peft import get_adapter_params, merge_lora_weights

    hf = _checkpoint(name, tmp_path / "base")
    model_type = FAMILIES[name]
    model, config = _native_lora_model(tmp_path / "base", model_type)
    adapter = {k: v.detach().clone() for k, v in get_adapter_params(model).items()}
    assert any(".mlp.experts.gate_up.lora_a.weight" in k for k in adapter)
    written = save_peft_adapter(
        tmp_path / "adapter", adapter, model_type=model_type, rank=4, alpha=8.0, hf_config=config
    )
    assert written["target_parameters"] == ["down_proj", "gate_up_proj"]
    tokens = torch.randint(3, 150, (2, 11), generator=torch.Generator().manual_seed(0))
    adapted = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        ours = model(tokens)
        theirs = adapted(tokens).logits
        base = adapted.get_base_model()
        with adapted.disable_adapter():
            plain = base(tokens).logits
    scale = theirs.abs().max()
    assert (ours - plain).abs().max() > 1e-2 * scale  # the adapters matter
    assert (ours - theirs).abs().max() <= 1e-5 * scale
    # the loop path and the grouped path give the same adapted experts
    for experts in (m for n, m in model.named_modules() if n.endswith("mlp.experts")):
        experts.use_grouped_mm = False
    with torch.no_grad():
        assert (model(tokens) - ours).abs().max() <= 1e-5 * scale
    # PEFT -> native is exact, and merged experts give the adapted logits
    back, _ = load_peft_adapter(tmp_path / "adapter", model_type, config)
    assert back.keys() == adapter.keys()
    assert all(torch.equal(back[k], adapter[k]) for k in adapter)
    merge_lora_weights(model)
    assert not any("lora" in k for k in model.state_dict())
    with torch.no_grad():
        assert (model(tokens) - ours).abs().max() <= 1e-5 * scale


def test_expert_lora_refuses_dropout_and_dora():
    from tunesmith.models import build_decoder
    from tunesmith.models._specs import get_spec
    from tunesmith.models.spec import LoRASettings

    spec = get_spec("qwen3_moe_30b_a3b")
    with torch.device("meta"):
        with pytest.raises(ValueError, match="lora_dropout=0.05 with apply_lora_to_mlp"):
            build_decoder(spec, LoRASettings(("q_proj",), True, lora_dropout=0.05))
        with pytest.raises(ValueError, match="DoRA / QLoRA experts are not supported"):
            build_decoder(spec, LoRASettings(("q_proj",), True, use_dora=True))


def test_gpt_oss_expert_adapter_has_no_peft_mapping():
    from tunesmith.models.peft_format import native_to_peft

    key = "layers.0.mlp.experts.gate_up.lora_a.weight"
    with pytest.raises(ValueError, match="PEFT has no mapping here for GPT_OSS"):
        native_to_peft({key: torch.zeros(4, 2, 8)}, "GPT_OSS")


def test_dense_mlp_lora_next_to_experts_is_refused_for_peft():
    from tunesmith.models.peft_format import native_to_peft

    adapter = {
        "layers.0.mlp.experts.gate_up.lora_a.weight": torch.zeros(4, 2, 8),
        "layers.2.mlp.w1.lora_a.weight": torch.zeros(2, 8),
    }
    with pytest.raises(ValueError, match="layers.2.mlp.w1.lora_a.weight: PEFT .* reads gate_proj"):
        native_to_peft(adapter, "QWEN3_MOE")
