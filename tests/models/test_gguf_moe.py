"""GGUF export of the mixture-of-experts families llama.cpp runs: Mixtral (``llama`` with
``ffn_gate_inp`` / ``ffn_{gate,up,down}_exps``) and Qwen3-MoE (``qwen3moe``). Tiny random
transformers models exported from their Hugging Face folders: llama.cpp's logits equal
transformers' (routing included)."""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from .test_gguf_sentencepiece import TOY_SPM, _check, _field, _folder, _need  # noqa: E402


def test_mixtral_logits_equal_transformers(tmp_path: Path) -> None:
    _need(TOY_SPM)
    config = transformers.MixtralConfig(
        vocab_size=2000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=128, sliding_window=None,
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.MixtralForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.expert_count") == 4
    assert _field(reader, "llama.expert_used_count") == 2
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == (64, 96, 4)  # GGUF order: [in, out, E]
    assert shapes["blk.0.ffn_down_exps.weight"] == (96, 64, 4)


def test_qwen3_moe_logits_equal_transformers(tmp_path: Path) -> None:
    _need(TOY_SPM)
    config = transformers.Qwen3MoeConfig(
        vocab_size=2000, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
        max_position_embeddings=128,
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.Qwen3MoeForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "qwen3moe"
    assert _field(reader, "qwen3moe.expert_feed_forward_length") == 32
    assert "blk.0.ffn_gate_inp.weight" in {t.name for t in reader.tensors}


def test_qwen3_moe_without_renormalised_routing_is_refused(tmp_path: Path) -> None:
    from tunesmith.models._gguf_arch import gguf_arch
    from tunesmith.models.convert_weights import spec_from_hf_config

    config = transformers.Qwen3MoeConfig(
        vocab_size=2000, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="qwen3moe.*routing other than softmax top-k"):
        gguf_arch(spec_from_hf_config(config.to_dict()))
