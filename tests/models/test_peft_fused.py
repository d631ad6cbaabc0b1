"""LoRA / DoRA on the parts of Phi-3's fused qkv_proj / gate_up_proj, saved in PEFT's format.

tunesmith keeps q/k/v and gate/up apart, each with its own adapter; PEFT adapts the fused
module. The adapter is written as one rank-``k r`` adapter (stacked A, block-diagonal B,
rank / alpha patterns), so PEFT on the transformers model must give tunesmith's logits, and
reading it back must give the same native adapters (resume). The bundled Phi-3 LoRA config
trains and saves (this used to fail at the save, after the whole run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.models import build_from_hf
from tunesmith.models._peft_fused import FUSED_METADATA_KEY, fuse_lora, split_fused_lora
from tunesmith.models.convert_weights import hf_to_native
from tunesmith.models.peft_format import load_peft_adapter, save_peft_adapter
from tunesmith.modules.peft import get_adapter_state_dict

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB = 96


def _phi3(tmp_path: Path, partial_rotary: float = 1.0) -> tuple[Path, dict]:
    config = transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        partial_rotary_factor=partial_rotary, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "base"
    transformers.Phi3ForCausalLM(config).save_pretrained(folder)
    return folder, json.loads((folder / "config.json").read_text())


def _adapted(folder: Path, cfg: dict, attn: list[str], mlp: bool, dora: bool = False):
    model = build_from_hf(
        folder, lora_attn_modules=attn, apply_lora_to_mlp=mlp, lora_rank=4, lora_alpha=8,
        use_dora=dora,
    ).eval()  # fmt: skip
    from safetensors.torch import load_file

    base = hf_to_native(load_file(folder / "model.safetensors"), "PHI3_MINI", cfg)
    missing, _ = model.load_state_dict(base, strict=False)
    assert all("lora" in k or "magnitude" in k for k in missing)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every part its own A and a non-zero B: as after training
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("magnitude"):
                p.mul_(1 + 0.1 * torch.rand(p.shape, generator=g))
    return model


CASES = {
    "q_v": (["q_proj", "v_proj"], False, False),
    "q_v_out_mlp": (["q_proj", "v_proj", "output_proj"], True, False),  # the bundled config
    "all": (["q_proj", "k_proj", "v_proj", "output_proj"], True, False),
    "k_only": (["k_proj"], False, False),
    "dora_all": (["q_proj", "k_proj", "v_proj"], True, True),
}


@pytest.mark.parametrize("case", CASES)
def test_peft_gives_tunesmiths_logits_and_reloads(tmp_path: Path, case: str) -> None:
    attn, mlp, dora = CASES[case]
    folder, cfg = _phi3(tmp_path)
    model = _adapted(folder, cfg, attn, mlp, dora)
    adapter = get_adapter_state_dict(model.state_dict())
    out = tmp_path / "adapter"
    config = save_peft_adapter(
        out, adapter, model_type="PHI3_MINI", rank=4, alpha=8, hf_config=cfg,
        base_model_name_or_path=str(folder),
    )  # fmt: skip
    tokens = torch.tensor([[5, 17, 33, 2, 60, 71, 9, 44]])
    base = transformers.Phi3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    adapted = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        want = model(tokens)
        got = adapted(tokens).logits
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-5 * scale
    if not dora and len([m for m in attn if m != "output_proj"]) > 1:
        assert config["rank_pattern"]  # parts with their own A: the block form was needed

    native, _ = load_peft_adapter(out, "PHI3_MINI", cfg)
    assert native.keys() == adapter.keys()
    for key, value in adapter.items():
        assert torch.equal(native[key], value), key


def test_shared_a_keeps_the_plain_form(tmp_path: Path) -> None:
    """Parts sharing one A (an adapter PEFT trained on the fused module, just loaded) are
    written as the plain rank-r adapter, with no patterns or metadata."""
    from safetensors import safe_open

    folder, cfg = _phi3(tmp_path)
    model = _adapted(folder, cfg, ["q_proj", "k_proj", "v_proj"], False)
    with torch.no_grad():
        for layer in model.layers:
            a = layer.attn.q_proj.lora_a.weight
            layer.attn.k_proj.lora_a.weight.copy_(a)
            layer.attn.v_proj.lora_a.weight.copy_(a)
    adapter = get_adapter_state_dict(model.state_dict())
    config = save_peft_adapter(
        tmp_path / "a", adapter, model_type="PHI3_MINI", rank=4, alpha=8, hf_config=cfg
    )
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt") as f:
        assert FUSED_METADATA_KEY not in (f.metadata() or {})
        assert (
            f.get_tensor("base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight").shape[
                0
            ]
            == 4
        )
    native, _ = load_peft_adapter(tmp_path / "a", "PHI3_MINI", cfg)
    assert all(torch.equal(native[k], v) for k, v in adapter.items())


def test_block_form_round_trip_and_refusals() -> None:
    g = torch.Generator().manual_seed(0)
    a = {n: torch.randn(2, 8, generator=g) for n in ("q_proj", "v_proj")}
    b = {"q_proj": torch.randn(6, 2, generator=g), "v_proj": torch.randn(3, 2, generator=g)}
    fused = fuse_lora(
        "self_attn.qkv_proj", {"lora_a.weight": a, "lora_b.weight": b}, [6, 3, 3], "layers.0"
    )
    assert fused["lora_a.weight"].shape == (4, 8) and fused["lora_b.weight"].shape == (12, 4)
    x = torch.randn(8, generator=g)
    delta = fused["lora_b.weight"] @ (fused["lora_a.weight"] @ x)
    want = torch.cat(
        [b["q_proj"] @ (a["q_proj"] @ x), torch.zeros(3), b["v_proj"] @ (a["v_proj"] @ x)]
    )
    torch.testing.assert_close(delta, want)
    names, adapted = ("q_proj", "k_proj", "v_proj"), ["q_proj", "v_proj"]
    back = split_fused_lora("lora_b.weight", fused["lora_b.weight"], names, [6, 3, 3], adapted)
    assert torch.equal(back["q_proj"], b["q_proj"]) and torch.equal(back["v_proj"], b["v_proj"])
    dense = fused["lora_b.weight"].clone()
    dense[7, 0] = 1.0  # a k row: not block-diagonal any more
    with pytest.raises(ValueError, match="not block-diagonal"):
        split_fused_lora("lora_b.weight", dense, names, [6, 3, 3], adapted)
    with pytest.raises(ValueError, match="DoRA"):
        fuse_lora(
            "self_attn.qkv_proj",
            {"lora_a.weight": a, "lora_b.weight": b, "magnitude": {"q_proj": torch.ones(6)}},
            [6, 3, 3],
            "layers.0",
        )


def test_patterns_other_than_ours_are_refused(tmp_path: Path) -> None:
    folder, cfg = _phi3(tmp_path)
    model = _adapted(folder, cfg, ["q_proj", "v_proj"], False)
    out = tmp_path / "a"
    save_peft_adapter(
        out, get_adapter_state_dict(model.state_dict()), model_type="PHI3_MINI", rank=4,
        alpha=8, hf_config=cfg,
    )  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"qkv_proj": 8} and config["alpha_pattern"] == {"qkv_proj": 16}
    config["alpha_pattern"] = {"qkv_proj": 32}
    (out / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="alpha_pattern"):
        load_peft_adapter(out, "PHI3_MINI", cfg)


def test_partial_qkv_dora_is_refused_at_build(tmp_path: Path) -> None:
    folder, _ = _phi3(tmp_path)
    with pytest.raises(ValueError, match="fuse q/k/v"):
        build_from_hf(folder, lora_attn_modules=["q_proj", "v_proj"], use_dora=True)


def test_bundled_phi3_lora_config_trains_and_saves(assets: Path, tmp_path: Path) -> None:
    """phi3/mini_lora_single_device as shipped (q/v/output + MLP LoRA) on a tiny Phi-3: the run
    saves its adapter, and PEFT on the base gives the merged model's logits."""
    from tests.recipes.test_finetune_cli import _run

    tok = assets / "tokenizers" / "llama2" / "tokenizer.model"
    data = assets / "torchtune_tests" / "alpaca_tiny.json"
    if not tok.is_file() or not data.is_file():
        pytest.skip(f"needs {tok} and {data}")
    config = transformers.Phi3Config(
        vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=32000, bos_token_id=1, eos_token_id=32000,
    )  # fmt: skip
    torch.manual_seed(0)
    model_dir = tmp_path / "phi3_tiny"
    transformers.Phi3ForCausalLM(config).save_pretrained(model_dir)
    out = tmp_path / "out"
    common = [
        "run", "lora_finetune_single_device", "--config", "phi3/mini_lora_single_device",
        f"output_dir={out}",
        "model._component_=tunesmith.models.build_from_hf",
        f"model.checkpoint_dir_or_config={model_dir}",
        f"tokenizer.path={tok}", "tokenizer.max_seq_len=128",
        f"checkpointer.checkpoint_dir={model_dir}",
        "checkpointer.checkpoint_files=[model.safetensors]",
        "dataset.source=json", f"dataset.data_files={data}", "dataset.split=train",
        "device=cpu", "dtype=fp32", "optimizer.fused=False", "lr_scheduler.num_warmup_steps=0",
        "gradient_accumulation_steps=1", "batch_size=2", "max_steps_per_epoch=2",
        "metric_logger.filename=log.jsonl",
    ]  # fmt: skip
    _run(common, cwd=tmp_path)
    saved = out / "epoch_1"
    adapter_dir = saved / "adapter"
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    merged = transformers.Phi3ForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    base = transformers.Phi3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    adapted = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    tokens = torch.tensor([[1, 450, 4996, 17354, 1701, 29916, 32000]])
    with torch.no_grad():
        want = merged(tokens).logits
        got = adapted(tokens).logits
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
