"""Public builders: torchtune's names, LoRA / DoRA / QLoRA variants, clear errors."""

from __future__ import annotations

import importlib

import pytest
import torch

from tunesmith.models import SPECS, build_decoder, lora_settings
from tunesmith.models.spec import ModelSpec

# torchtune's exported builder names (torchtune/models/<family>/__init__.py), minus
# tokenizers and component builders.
TORCHTUNE_NAMES = {
    "llama2": ["llama2_7b", "llama2_13b", "llama2_70b", "llama2_reward_7b"],
    "code_llama2": ["code_llama2_7b", "code_llama2_13b", "code_llama2_70b"],
    "llama3": ["llama3_8b", "llama3_70b"],
    "llama3_1": ["llama3_1_8b", "llama3_1_70b", "llama3_1_405b"],
    "llama3_2": ["llama3_2_1b", "llama3_2_3b"],
    "llama3_3": ["llama3_3_70b"],
    "mistral": ["mistral_7b", "mistral_reward_7b"],
    "gemma": ["gemma_2b", "gemma_7b"],
    "gemma2": ["gemma2_2b", "gemma2_9b", "gemma2_27b"],
    "phi3": ["phi3_mini"],
    "phi4": ["phi4_14b"],
    "qwen2": ["qwen2_0_5b", "qwen2_1_5b", "qwen2_7b"],
    "qwen2_5": [n for n in SPECS if n.startswith("qwen2_5_")],
    "qwen3": [n for n in SPECS if n.startswith("qwen3_") and not n.startswith("qwen3_moe_")],
    "smollm2": ["smollm2_135m", "smollm2_360m", "smollm2_1_7b"],
}
NO_QLORA = {"qwen2", "qwen2_5", "qwen3", "smollm2"}


@pytest.mark.parametrize("family", sorted(TORCHTUNE_NAMES))
def test_family_exports_torchtune_names(family):
    module = importlib.import_module(f"tunesmith.models.{family}")
    exported = importlib.import_module(f"tunesmith.models.{family}._model_builders").__all__
    for name in TORCHTUNE_NAMES[family]:
        expected = [name, f"lora_{name}"] + ([] if family in NO_QLORA else [f"qlora_{name}"])
        for builder_name in expected:
            assert builder_name in exported, builder_name
            assert callable(getattr(module, builder_name))
    assert len(TORCHTUNE_NAMES["qwen2_5"]) == 12 and len(TORCHTUNE_NAMES["qwen3"]) == 11


def test_lora_param_count_matches_peft():
    from tunesmith.models.llama3_2 import llama3_2_1b, lora_llama3_2_1b

    with torch.device("meta"):
        base = sum(p.numel() for p in llama3_2_1b().parameters())
        lora = lora_llama3_2_1b(["q_proj", "v_proj"], lora_rank=8, lora_alpha=16)
    # peft.get_peft_model(Llama-3.2-1B, r=8, target q_proj/v_proj) prints 851,968 trainable
    added = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert added == 851_968
    assert sum(p.numel() for p in lora.parameters()) == base + added


TINY = ModelSpec(
    family="QWEN2",
    vocab_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=32,
    intermediate_dim=48,
    max_seq_len=64,
    qkv_bias=True,
)


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_model_with_zero_b_equals_base(use_dora):
    torch.manual_seed(0)
    base = build_decoder(TINY).eval()
    settings = lora_settings(
        ["q_proj", "k_proj", "v_proj", "output_proj"],
        apply_lora_to_mlp=True,
        apply_lora_to_output=True,
        use_dora=use_dora,
    )
    lora = build_decoder(TINY, settings).eval()
    missing, unexpected = lora.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert all(("lora_" in k) or k.endswith("magnitude") for k in missing)
    if use_dora:
        for m in lora.modules():
            if hasattr(m, "initialize_dora_magnitude"):
                m.initialize_dora_magnitude()
    tokens = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(lora(tokens), base(tokens), atol=1e-6, rtol=0)
    assert type(lora.layers[0].attn.q_proj).__name__ == ("DoRALinear" if use_dora else "LoRALinear")


def test_qlora_builder_quantizes_lora_bases():
    from tunesmith.models.builder import lora_model_builder

    builder = lora_model_builder("smollm2_135m", __name__, quantize_base=True, prefix="qlora")
    assert builder.__name__ == "qlora_smollm2_135m"
    settings = lora_settings(["q_proj"], quantize_base=True)
    model = build_decoder(TINY.replace(embed_dim=64, intermediate_dim=64), settings)
    q = model.layers[0].attn.q_proj
    assert type(q).__name__ == "LoRALinear"
    assert type(q.weight).__name__ == "NF4Tensor" or type(q.weight.data).__name__ == "NF4Tensor"
    assert type(model.layers[0].attn.k_proj).__name__ == "Linear"


def test_clear_errors():
    with pytest.raises(ValueError, match="lora_attn_modules"):
        lora_settings(["query"])
    with pytest.raises(ValueError, match="apply_lora_to_output"):
        build_decoder(
            SPECS["smollm2_135m"].replace(num_layers=1),
            lora_settings(["q_proj"], apply_lora_to_output=True),
        )
    with pytest.raises(KeyError, match="Known sizes"):
        from tunesmith.models import get_spec

        get_spec("llama9_1b")
