"""Phi-3 LoRA adapters as GGUF LoRA: tunesmith's separate q/k/v and gate/up adapters become
llama.cpp's fused ``attn_qkv`` / ``ffn_up`` adapters, and llama.cpp with the adapter gives the
logits of transformers + PEFT on the same adapter folder (the block form of
``tunesmith.models._peft_fused``, rank ``k r`` with llama.cpp's per-tensor ``alpha / rank``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (the llamacpp extra)")

from tests.models.test_gguf_sentencepiece import TOKENS, TOY_SPM, _folder, _need  # noqa: E402
from tunesmith.models import build_from_hf  # noqa: E402
from tunesmith.models.convert_weights import hf_to_native  # noqa: E402
from tunesmith.models.gguf_export import export_hf_folder_to_gguf  # noqa: E402
from tunesmith.models.gguf_lora import export_peft_adapter_to_gguf  # noqa: E402
from tunesmith.models.peft_format import save_peft_adapter  # noqa: E402
from tunesmith.modules.peft import get_adapter_state_dict  # noqa: E402


def _logits(model_path: Path, lora: Path | None) -> np.ndarray:
    kwargs = {"lora_path": str(lora)} if lora is not None else {}
    llm = llama_cpp.Llama(
        model_path=str(model_path), n_ctx=256, n_threads=2, logits_all=True, verbose=False,
        **kwargs,
    )  # fmt: skip
    llm.eval(TOKENS)
    out = np.array(llm.scores[: len(TOKENS)])
    del llm
    return out


@pytest.mark.parametrize(
    "attn", [["q_proj", "v_proj", "output_proj"], ["q_proj", "k_proj", "v_proj"]]
)
def test_phi3_gguf_lora_equals_peft(tmp_path: Path, attn: list[str]) -> None:
    _need(TOY_SPM)
    from safetensors.torch import load_file

    config = transformers.Phi3Config(
        vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, max_position_embeddings=128,
    )  # fmt: skip
    folder = _folder(tmp_path, config, transformers.Phi3ForCausalLM)
    cfg = config.to_dict()
    model = build_from_hf(
        folder, lora_attn_modules=attn, apply_lora_to_mlp=True, lora_rank=4, lora_alpha=8
    )
    model.load_state_dict(
        hf_to_native(load_file(folder / "model.safetensors"), "PHI3_MINI", cfg), strict=False
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every part its own A, non-zero B: as after training
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    adapter_dir = tmp_path / "adapter"
    save_peft_adapter(
        adapter_dir, get_adapter_state_dict(model.state_dict()), model_type="PHI3_MINI",
        rank=4, alpha=8, hf_config=cfg, base_model_name_or_path=str(folder),
    )  # fmt: skip
    base_gguf = export_hf_folder_to_gguf(folder, tmp_path / "base.f32.gguf", out_type="f32")
    lora_gguf = export_peft_adapter_to_gguf(
        adapter_dir, folder, tmp_path / "lora.f32.gguf", out_type="f32"
    )
    hf = transformers.Phi3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = hf(torch.tensor([TOKENS])).logits[0].numpy()
        want = (
            peft.PeftModel.from_pretrained(hf, adapter_dir)
            .eval()(torch.tensor([TOKENS]))
            .logits[0]
            .numpy()
        )
    got = _logits(base_gguf, lora_gguf)
    scale = np.abs(want).max()
    assert np.abs(want - plain).max() > 0.05 * scale  # the adapter changes the logits
    assert np.abs(got - want).max() <= 2e-3 * scale, np.abs(got - want).max() / scale
