"""Exact resume: 10 steps == 5 steps + resume for 5 (full and LoRA), and PEFT interop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.test_resume_harness import HF_CONFIG, LORA, make_base_checkpoint, train
from tunesmith.training import latest_complete_checkpoint


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("stop", [5, 6], ids=["mid-epoch", "epoch-end"])
def test_resume_continues_exact_loss_curve(tmp_path: Path, lora: bool, stop: int) -> None:
    base = make_base_checkpoint(tmp_path / "base")
    reference = train(base, tmp_path / "ref", 10, lora=lora)
    first = train(base, tmp_path / "run", 10, lora=lora, stop_after=stop)
    assert latest_complete_checkpoint(tmp_path / "run").name == f"step_{stop}"
    second = train(base, tmp_path / "run", 10, lora=lora, resume=True)
    assert len(first) == stop and len(second) == 10 - stop
    torch.testing.assert_close(
        torch.tensor(first + second), torch.tensor(reference), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_lora_checkpoint_is_peft_loadable_and_merged_weights_match(
    tmp_path: Path, use_dora: bool
) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    import json

    from tunesmith.models.builder import build_decoder, lora_settings
    from tunesmith.models.convert_weights import spec_from_hf_config
    from tunesmith.modules.peft import load_dora_magnitudes
    from tunesmith.training import FullModelHFCheckpointer

    base = make_base_checkpoint(tmp_path / "base")
    ckpt = FullModelHFCheckpointer(base, ["model.safetensors"], "LLAMA3", tmp_path / "out")
    settings = lora_settings(
        ["q_proj", "k_proj", "v_proj", "output_proj"],
        apply_lora_to_mlp=True,
        lora_rank=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        use_dora=use_dora,
    )
    model = build_decoder(spec_from_hf_config(HF_CONFIG), settings).eval()
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=False)
    if use_dora:
        load_dora_magnitudes(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.05)
            if "magnitude" in name:
                p.mul_(1.1)
    folder = ckpt.save_checkpoint(
        {"model": model.state_dict(), "adapter_config": dict(LORA)}, epoch=0
    )
    cfg = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == LORA["r"] and cfg["lora_alpha"] == LORA["lora_alpha"]
    assert cfg["use_dora"] is use_dora
    assert set(cfg["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    tokens = torch.randint(0, HF_CONFIG["vocab_size"], (2, 10))
    with torch.no_grad():
        ours = model(tokens)
        hf_base = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
        with_adapter = peft.PeftModel.from_pretrained(hf_base, folder / "adapter").eval()
        torch.testing.assert_close(with_adapter(tokens).logits, ours, atol=1e-5, rtol=1e-5)
        merged = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        torch.testing.assert_close(merged(tokens).logits, ours, atol=1e-5, rtol=1e-5)
    # adapter-only save, and reading it back gives the same native adapter
    only = ckpt.save_checkpoint(
        {"model": model.state_dict(), "adapter_config": dict(LORA)}, epoch=1, adapter_only=True
    )
    assert not list(only.glob("model*.safetensors"))
    assert (only / "adapter_model.safetensors").is_file()
    reread = FullModelHFCheckpointer(
        base, ["model.safetensors"], "LLAMA3", tmp_path / "o2", adapter_checkpoint=str(only)
    ).load_checkpoint()["adapter"]
    expected = {
        k: v for k, v in model.state_dict().items() if "lora_" in k or k.endswith(".magnitude")
    }
    assert reread.keys() == expected.keys()
    assert all(torch.equal(reread[k], expected[k]) for k in expected)
