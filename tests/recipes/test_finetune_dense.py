"""The finetune recipe LoRA-trains the current dense families (tiny transformers checkpoints):
the loss falls, the saved model loads in transformers with equal logits and the adapter is
PEFT's format. Gemma 3 (local / global RoPE, QK-norm, sandwich norms) runs in the default
suite; SmolLM3, OLMo 2, Granite (chunked-output loss: its logits_scaling) and Phi-4-mini-like
partial rotary + longrope, OLMo 3 (sliding window) and Granite 4.0 dense (fused shared_mlp,
its gate / up adapters saved in the block form) are slow."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes._recipe_toys import VOCAB
from tests.recipes.conftest import base_config
from tests.recipes.test_finetune import assert_learns

transformers = pytest.importorskip("transformers")

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _config(family: str):
    t = transformers
    if family == "gemma3":
        return (
            t.Gemma3TextConfig(
                **{**_COMMON, "num_hidden_layers": 3},
                head_dim=16,
                sliding_window=16,
                query_pre_attn_scalar=16,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            ),
            t.Gemma3ForCausalLM,
            "GEMMA3",
        )
    if family == "smollm3":
        return t.SmolLM3Config(**_COMMON, no_rope_layers=[1, 0]), t.SmolLM3ForCausalLM, "SMOLLM3"
    if family == "olmo2":
        return t.Olmo2Config(**_COMMON), t.Olmo2ForCausalLM, "OLMO2"
    if family == "olmo3":  # one sliding-window layer (window 16 < the 40-odd-token rows)
        cfg = t.Olmo3Config(
            **_COMMON, sliding_window=16, layer_types=["sliding_attention", "full_attention"]
        )
        return cfg, t.Olmo3ForCausalLM, "OLMO3"
    if family == "granite4":  # Granite 4.0 dense: granitemoehybrid, attention-only, no experts
        cfg = t.GraniteMoeHybridConfig(
            **_COMMON,
            shared_intermediate_size=96,
            num_local_experts=0,
            num_experts_per_tok=0,
            layer_types=["attention"] * 2,
            position_embedding_type="rope",
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=0.0625,
            logits_scaling=4.0,
        )
        return cfg, t.GraniteMoeHybridForCausalLM, "GRANITE4"
    if family == "granite":
        cfg = t.GraniteConfig(
            **_COMMON,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=0.0625,
            logits_scaling=4.0,
        )
        return cfg, t.GraniteForCausalLM, "GRANITE"
    cfg = t.Phi3Config(
        **_COMMON,
        partial_rotary_factor=0.75,
        original_max_position_embeddings=64,
        rope_scaling={"type": "longrope", "long_factor": [2.0] * 6, "short_factor": [1.0] * 6},
    )
    return cfg, t.Phi3ForCausalLM, "PHI3_MINI"


FAMILIES = ["gemma3"] + [
    pytest.param(f, marks=pytest.mark.slow)
    for f in ("smollm3", "olmo2", "olmo3", "granite", "granite4", "phi4_mini")
]


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_finetune_learns_and_saves_hf(family, instruct_data, tmp_path):
    from safetensors.torch import load_file

    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native
    from tunesmith.recipes.finetune import recipe_main

    config, cls, model_type = _config(family)
    model_dir = tmp_path / "base"
    torch.manual_seed(0)
    cls(config).save_pretrained(model_dir)
    out = tmp_path / "run"
    lora = {
        "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
        "apply_lora_to_mlp": True,
        "lora_rank": 8,
        "lora_alpha": 16,
    }
    if family == "phi4_mini":  # fused qkv / gate_up: q / v only, saved in the block form
        lora |= {"lora_attn_modules": ["q_proj", "v_proj", "output_proj"]}
    over = {"checkpointer.model_type": model_type, "optimizer.lr": 1e-2}
    if family in ("granite", "granite4"):  # its logits_scaling: the chunked-output loss applies it
        over["loss._component_"] = "tunesmith.modules.loss.CEWithChunkedOutputLoss"
    cfg = base_config(out, model_dir, instruct_data, **over)
    cfg["model"] = {"_component_": "tunesmith.models.from_hf", "checkpoint_dir": str(model_dir)}
    cfg["model"] |= lora
    recipe_main(OmegaConf.create(cfg))
    assert_learns(out)
    saved = out / "epoch_1"
    hf = cls.from_pretrained(saved).eval()
    sd = load_file(saved / "model.safetensors")
    ours = build_from_hf(saved).eval()
    ours.load_state_dict(
        hf_to_native(sd, model_type, json.loads((saved / "config.json").read_text()))
    )
    tokens = torch.tensor([[5, *b"user: Reverse and shout.", 10]]) % VOCAB
    with torch.no_grad():
        merged = hf(tokens).logits
        assert (ours(tokens) - merged).abs().max() <= 1e-4 * max(merged.abs().max().item(), 1.0)
    peft = pytest.importorskip("peft")
    base = cls.from_pretrained(model_dir).eval()
    adapted = peft.PeftModel.from_pretrained(base, saved / "adapter").eval()
    with torch.no_grad():
        assert (adapted(tokens).logits - merged).abs().max() <= 1e-4 * max(
            merged.abs().max().item(), 1.0
        )
