"""The finetune recipe trains a tiny Qwen3-MoE: full and LoRA on attention learn with the
router load-balancing / z-losses on, log the router statistics, and save HF-format experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes._recipe_toys import VOCAB
from tests.recipes.conftest import base_config
from tests.recipes.test_finetune import assert_learns

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_qwen3_moe")
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    transformers.Qwen3MoeForCausalLM(config).save_pretrained(folder)
    return folder


def _run(tmp_path: Path, model_dir: Path, data: Path, name: str, **over) -> Path:
    from tunesmith.recipes.finetune import recipe_main

    out = tmp_path / name
    over = {
        "model": {"_component_": "tunesmith.models.from_hf", "checkpoint_dir": str(model_dir)},
        "checkpointer.model_type": "QWEN3_MOE",
        "router_aux_loss_coef": 0.01,
        "router_z_loss_coef": 0.001,
        **over,
    }
    recipe_main(OmegaConf.create(base_config(out, model_dir, data, **over)))
    return out


@pytest.mark.parametrize(
    "lora, checkpointing, experts",
    [(False, False, False), (True, True, False), (True, False, True)],
    ids=["full", "lora_attn_ckpt", "lora_experts"],
)
def test_moe_finetune_learns_and_logs_router_stats(
    tiny_moe, instruct_data, tmp_path, lora, checkpointing, experts
):
    over = {"enable_activation_checkpointing": checkpointing}
    if lora:
        over |= {
            "model.lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
            "model.apply_lora_to_mlp": experts,  # per-expert LoRA (PEFT target_parameters)
            "model.apply_lora_to_output": True,
            "model.lora_rank": 8,
            "model.lora_alpha": 16,
            "optimizer.lr": 1e-2,
        }
    name = "lora_experts" if experts else "lora" if lora else "full"
    out = _run(tmp_path, tiny_moe, instruct_data, name, **over)
    assert_learns(out)
    rows = [json.loads(line) for line in (out / "logs" / "log.jsonl").read_text().splitlines()]
    step = next(r for r in rows if "loss" in r)
    assert step["router/aux_loss"] >= 1.0 - 1e-4  # E * sum f * P >= 1, equality when balanced
    assert step["router/z_loss"] > 0
    fracs = [step[f"router/expert_frac_{e}"] for e in range(4)]
    assert abs(sum(fracs) - 1) <= 1e-6 and step["router/expert_frac_max"] == max(fracs)
    # the saved checkpoint is HF's per-expert layout and loads in transformers
    saved = out / "epoch_1"
    hf = transformers.Qwen3MoeForCausalLM.from_pretrained(saved).eval()
    from safetensors.torch import load_file

    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native

    sd = load_file(saved / "model.safetensors")
    assert "model.layers.0.mlp.experts.3.down_proj.weight" in sd
    ours = build_from_hf(saved).eval()
    ours.load_state_dict(
        hf_to_native(sd, "QWEN3_MOE", json.loads((saved / "config.json").read_text()))
    )
    tokens = torch.tensor([[257, *b"user: Reverse and shout.", 10]])
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max() <= 1e-4
    if lora:  # the adapter is PEFT's format: on the base model it gives the merged logits
        peft = pytest.importorskip("peft")
        base = transformers.Qwen3MoeForCausalLM.from_pretrained(tiny_moe).eval()
        adapted = peft.PeftModel.from_pretrained(base, saved / "adapter").eval()
        config = json.loads((saved / "adapter" / "adapter_config.json").read_text())
        assert config.get("target_parameters", []) == (
            ["down_proj", "gate_up_proj"] if experts else []
        )
        with torch.no_grad():
            assert (adapted(tokens).logits - hf(tokens).logits).abs().max() <= 1e-4


def test_router_coefficient_on_a_dense_model_is_an_error(run_finetune):
    with pytest.raises(ValueError, match="router_aux_loss_coef=0.01: the model has no mixture"):
        run_finetune(router_aux_loss_coef=0.01)


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    from tunesmith.models import from_hf

    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]})
    )
    with pytest.raises(ValueError, match=r"'mamba' \(MambaForCausalLM\).*mixtral.*qwen3_moe"):
        from_hf(tmp_path)


def test_quantized_checkpoint_is_refused(tmp_path):
    from tests.models._tiny_hf import tiny_configs
    from tunesmith.models import from_hf

    config = tiny_configs()["gpt_oss"].to_dict()
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"quantized \(mxfp4\).*bf16"):
        from_hf(tmp_path)


@pytest.mark.parametrize("family", ["gpt_oss", "llama4"])
def test_other_moe_families_finetune(family, instruct_data, tmp_path):
    """gpt-oss (sinks, yarn, clamped experts) and Llama 4 (chunked / NoPE attention, sigmoid
    routing) train through the unpadded path and save a checkpoint transformers loads."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    if family == "gpt_oss":
        config = transformers.GptOssConfig(
            **common, num_local_experts=4, num_experts_per_tok=2, sliding_window=16
        )
    else:
        config = transformers.Llama4TextConfig(
            **common,
            intermediate_size_mlp=128,
            num_local_experts=4,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
            attention_chunk_size=16,
            no_rope_layers=[1, 0],
        )
    model_dir = tmp_path / "base"
    torch.manual_seed(0)
    cls = transformers.GptOssForCausalLM if family == "gpt_oss" else transformers.Llama4ForCausalLM
    cls(config).save_pretrained(model_dir)
    model_type = {"gpt_oss": "GPT_OSS", "llama4": "LLAMA4"}[family]
    out = _run(
        tmp_path, model_dir, instruct_data, family, **{"checkpointer.model_type": model_type}
    )
    assert_learns(out)
    assert cls.from_pretrained(out / "epoch_1") is not None
