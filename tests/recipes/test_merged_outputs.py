"""Saved outputs equal what they claim: merged == base + adapter (checked with PEFT), the
base checkpoint's dtype and values are kept for tensors the adapter does not touch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.conftest import LORA

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TOKENS = torch.tensor([[257, *b"user: Reverse and shout. apple", 10]])
# lr high enough that bf16 training moves the adapter well away from zero in 4 steps
RUN = {"max_steps_per_epoch": 4, "optimizer.lr": 3e-2, "dtype": "bf16"}


def _lora(**extra: object) -> dict[str, object]:
    return {**RUN, **{f"model.{k}": v for k, v in LORA.items()}, **extra}


@pytest.mark.parametrize(
    "name, extra",
    [
        ("lora", {}),
        pytest.param("dora", {"model.use_dora": True}, marks=pytest.mark.slow),
        # NF4 base in training, the exact base merged
        pytest.param("qlora", {"model.quantize_base": True}, marks=pytest.mark.slow),
    ],
)
def test_bf16_lora_on_fp32_base_merges_exactly(
    run_finetune, tiny_llama: Path, name: str, extra: dict
) -> None:
    """bf16 LoRA/DoRA/QLoRA on an fp32 base: the merged folder == PEFT merge_and_unload of the
    fp32 base + the saved adapter; untouched tensors are bit-identical to the base file."""
    out = run_finetune(name, **_lora(**extra))
    folder = out / "epoch_1"
    base_file = load_file(tiny_llama / "model.safetensors")
    merged_file = load_file(folder / "model.safetensors")
    assert set(merged_file) == set(base_file)
    adapted = {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    untouched = [k for k in base_file if k.split(".")[-2] not in adapted]
    assert any("layernorm" in k for k in untouched) and "model.embed_tokens.weight" in untouched
    for key in base_file:
        assert merged_file[key].dtype == base_file[key].dtype == torch.float32, key
    for key in untouched:
        assert torch.equal(merged_file[key], base_file[key]), f"{key} is not the base's value"
    changed = [k for k in base_file if not torch.equal(merged_file[k], base_file[k])]
    assert changed and all(k.split(".")[-2] in adapted for k in changed)

    base = transformers.LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    reference = peft.PeftModel.from_pretrained(base, folder / "adapter").merge_and_unload().eval()
    ours = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = reference(TOKENS).logits, ours(TOKENS).logits
        assert (got - want).abs().max() <= 1e-5
        plain = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
        assert (plain(TOKENS).logits - want).abs().max() > 1e-2  # the adapter did something
    ref_sd = reference.state_dict()
    for key, tensor in merged_file.items():
        assert torch.allclose(tensor, ref_sd[key], atol=1e-6, rtol=1e-5), key


@pytest.mark.slow
def test_bf16_full_finetune_on_fp32_base_stores_fp32(run_finetune, tiny_llama: Path) -> None:
    """Full finetune in bf16 on an fp32 base: every trained weight is stored in the base dtype
    (fp32), holding the bf16 values training produced (exactly representable in fp32)."""
    out = run_finetune("full", **RUN)
    base_file = load_file(tiny_llama / "model.safetensors")
    saved = load_file(out / "epoch_1" / "model.safetensors")
    assert set(saved) == set(base_file)
    for key, tensor in saved.items():
        assert tensor.dtype == torch.float32, key
        assert torch.equal(tensor, tensor.to(torch.bfloat16).float()), f"{key}: not bf16 values"
    assert any(not torch.equal(saved[k], base_file[k]) for k in saved)
