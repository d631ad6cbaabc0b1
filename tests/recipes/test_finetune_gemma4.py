"""The finetune recipe LoRA-trains a tiny Gemma 4 (per-layer embeddings, KV sharing, values =
keys, value norms, layer scalars): the loss falls, the merged checkpoint loads in transformers
with equal logits and the saved adapter is PEFT's format (``PeftModel.from_pretrained``)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes._recipe_toys import VOCAB
from tests.recipes.conftest import base_config
from tests.recipes.test_finetune import assert_learns

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma4ForCausalLM"):  # pragma: no cover - older transformers
    pytest.skip("transformers has no Gemma 4", allow_module_level=True)

S, F = "sliding_attention", "full_attention"


@pytest.mark.slow
def test_lora_finetune_gemma4_learns_and_saves_hf(instruct_data, tmp_path):
    from safetensors.torch import load_file

    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native
    from tunesmith.recipes.finetune import recipe_main

    config = transformers.Gemma4TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        sliding_window=16,
        layer_types=[S, F, S, F],
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB,
        num_kv_shared_layers=2,
        final_logit_softcapping=30.0,
        max_position_embeddings=512,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model_dir = tmp_path / "base"
    torch.manual_seed(0)
    transformers.Gemma4ForCausalLM(config).save_pretrained(model_dir)
    out = tmp_path / "run"
    cfg = base_config(
        out, model_dir, instruct_data, **{"checkpointer.model_type": "GEMMA4", "optimizer.lr": 1e-2}
    )
    cfg["model"] = {
        "_component_": "tunesmith.models.from_hf",
        "checkpoint_dir": str(model_dir),
        "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
        "apply_lora_to_mlp": True,
        "lora_rank": 8,
        "lora_alpha": 16,
    }
    recipe_main(OmegaConf.create(cfg))
    assert_learns(out)
    saved = out / "epoch_1"
    hf = transformers.Gemma4ForCausalLM.from_pretrained(saved).eval()
    sd = load_file(saved / "model.safetensors")
    ours = build_from_hf(saved).eval()
    ours.load_state_dict(
        hf_to_native(sd, "GEMMA4", json.loads((saved / "config.json").read_text()))
    )
    tokens = torch.tensor([[5, *b"user: Reverse and shout.", 10]]) % VOCAB
    with torch.no_grad():
        merged = hf(tokens).logits
        scale = max(merged.abs().max().item(), 1.0)
        assert (ours(tokens) - merged).abs().max() <= 1e-4 * scale
    peft = pytest.importorskip("peft")
    base = transformers.Gemma4ForCausalLM.from_pretrained(model_dir).eval()
    adapted = peft.PeftModel.from_pretrained(base, saved / "adapter").eval()
    with torch.no_grad():
        assert (adapted(tokens).logits - merged).abs().max() <= 1e-4 * scale
