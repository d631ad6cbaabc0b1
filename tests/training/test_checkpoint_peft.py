"""Checkpointers read and write adapters through ``tunesmith.models.peft_format``.

Reference: adapters attached and saved by ``peft`` on ``transformers`` models.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint
from tunesmith.models import build_from_hf
from tunesmith.modules.peft import get_adapter_params
from tunesmith.training import FullModelHFCheckpointer

peft = pytest.importorskip("peft")


def _peft_adapter(hf_model, folder: Path, targets: list[str]):
    """A nonzero PEFT LoRA on ``hf_model`` saved to ``folder``; returns the PEFT model."""
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about adapting a tied lm_head
        model = peft.get_peft_model(hf_model, config).eval()
        model.save_pretrained(folder)
    return model


def test_tied_lm_head_adapter_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """PEFT adapts a tied lm_head (logits change, embeddings do not); a native tied model
    cannot hold that, so loading must fail instead of dropping or misplacing it."""
    hf = make_checkpoint("qwen2", tmp_path / "base")  # tie_word_embeddings=True
    tokens = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = hf(tokens).logits
    model = _peft_adapter(hf, tmp_path / "adapter", ["lm_head"])
    inner = model.base_model.model
    assert inner.lm_head.base_layer.weight is inner.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        assert (model(tokens).logits - base_logits).abs().max() > 1e-3  # PEFT applies it
    ckpt = FullModelHFCheckpointer(
        tmp_path / "base",
        ["model.safetensors"],
        "QWEN2",
        tmp_path / "out",
        adapter_checkpoint=str(tmp_path / "adapter"),
    )
    with pytest.raises(ValueError, match=r"lm_head.*tie_word_embeddings=true.*Untie"):
        ckpt.load_checkpoint()


def test_tied_model_adapter_without_lm_head_loads_with_peft_logits(tmp_path: Path) -> None:
    hf = make_checkpoint("qwen2", tmp_path / "base")
    model = _peft_adapter(hf, tmp_path / "adapter", ["q_proj", "v_proj", "down_proj"])
    state = FullModelHFCheckpointer(
        tmp_path / "base",
        ["model.safetensors"],
        "QWEN2",
        tmp_path / "out",
        adapter_checkpoint=str(tmp_path / "adapter" / "adapter_model.safetensors"),
    ).load_checkpoint()
    ours = build_from_hf(
        tmp_path / "base", lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
        lora_rank=4, lora_alpha=8,
    ).eval()  # fmt: skip
    missing, unexpected = ours.load_state_dict({**state["model"], **state["adapter"]}, strict=False)
    assert not unexpected
    assert set(missing) <= set(get_adapter_params(ours))  # w1/w3 adapters stay at B = 0
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), model(tokens).logits, atol=1e-5, rtol=1e-5)


def test_native_adapter_file_and_peft_named_file(tmp_path: Path) -> None:
    """torchtune's ``adapter_0.pt`` (native keys) loads as is; a PEFT-named file without its
    folder's adapter_config.json is refused with a pointer to the folder."""
    make_checkpoint("llama3_1", tmp_path / "base")
    native = {"layers.0.attn.q_proj.lora_a.weight": torch.randn(4, 64)}
    torch.save(native, tmp_path / "base" / "adapter_0.pt")
    torch.save(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 64)},
        tmp_path / "base" / "peft_keys.pt",
    )

    def load(adapter: str) -> dict:
        return FullModelHFCheckpointer(
            tmp_path / "base",
            ["model.safetensors"],
            "LLAMA3",
            tmp_path / "out",
            adapter_checkpoint=adapter,
        ).load_checkpoint()

    got = load("adapter_0.pt")["adapter"]
    assert got.keys() == native.keys() and torch.equal(got[next(iter(native))], *native.values())
    with pytest.raises(ValueError, match="PEFT folder"):
        load("peft_keys.pt")
    with pytest.raises(FileNotFoundError, match="adapter_checkpoint"):
        load("missing.pt")
