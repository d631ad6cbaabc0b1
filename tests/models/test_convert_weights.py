"""Meta / torchtune / LoRA-key conversions, checked against transformers' own GGUF permutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint
from tunesmith.models import build_decoder, spec_from_hf_config
from tunesmith.models.convert_weights import (
    hf_to_native,
    meta_to_native,
    native_to_hf,
    native_to_meta,
    native_to_torchtune,
    permute_hf_to_meta,
    permute_meta_to_hf,
    torchtune_to_native,
)


def test_permutation_matches_transformers_gguf_reader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(4 * 16, 24)
    interleaved = permute_hf_to_meta(w, n_heads=4, head_dim=16)
    restored = LlamaTensorProcessor()._reverse_permute_weights(interleaved.numpy(), 4)
    np.testing.assert_array_equal(restored, w.numpy())
    assert torch.equal(permute_meta_to_hf(interleaved, 4, 16), w)
    bias = torch.randn(64)
    assert torch.equal(permute_meta_to_hf(permute_hf_to_meta(bias, 4, 16), 4, 16), bias)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    hf = make_checkpoint("llama3_1", directory)
    config, hf_sd = read_checkpoint(directory)
    return hf, config, hf_to_native(hf_sd, "LLAMA3", config)


def test_meta_round_trip_and_logits(llama):
    hf, config, native = llama
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2}
    meta = native_to_meta(native, "LLAMA3", params)
    assert "layers.0.attention.wq.weight" in meta and "layers.1.ffn_norm.weight" in meta
    assert not torch.equal(
        meta["layers.0.attention.wk.weight"], native["layers.0.attn.k_proj.weight"]
    )
    meta["rope.freqs"] = torch.zeros(8)  # present in Meta's files, dropped on load
    back = meta_to_native(meta, "LLAMA3", params)
    assert back.keys() == native.keys()
    assert all(torch.equal(back[k], native[k]) for k in native)
    model = build_decoder(spec_from_hf_config(config)).eval()
    model.load_state_dict(back)
    tokens = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-5


def test_torchtune_round_trip_permutes_only_llama_style(llama):
    _, _, native = llama
    tt = native_to_torchtune(native, "LLAMA3", 4, 2, 16)
    assert not torch.equal(tt["layers.0.attn.q_proj.weight"], native["layers.0.attn.q_proj.weight"])
    assert torch.equal(tt["layers.0.attn.v_proj.weight"], native["layers.0.attn.v_proj.weight"])
    back = torchtune_to_native(tt, "LLAMA3", 4, 2, 16)
    assert all(torch.equal(back[k], native[k]) for k in native)
    qwen = native_to_torchtune(native, "QWEN2", 4, 2, 16)
    assert all(qwen[k] is native[k] for k in native)


def test_lora_and_dora_keys_follow_their_module():
    sd = {
        "layers.0.attn.q_proj.lora_a.weight": torch.randn(4, 64),
        "layers.0.attn.q_proj.lora_b.weight": torch.randn(64, 4),
        "layers.0.attn.q_proj.magnitude": torch.randn(64),
        "layers.0.mlp.w2.lora_a.weight": torch.randn(4, 96),
        "layers.0.attn.q_norm.scale": torch.randn(16),
        "output.lora_b.weight": torch.randn(VOCAB, 4),
    }
    hf = native_to_hf(sd, "QWEN3", {})
    assert set(hf) == {
        "model.layers.0.self_attn.q_proj.lora_a.weight",
        "model.layers.0.self_attn.q_proj.lora_b.weight",
        "model.layers.0.self_attn.q_proj.magnitude",
        "model.layers.0.mlp.down_proj.lora_a.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "lm_head.lora_b.weight",
    }
    back = hf_to_native(hf, "QWEN3", {})
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    params = {"dim": 64, "n_heads": 4, "n_kv_heads": 2}
    meta = native_to_meta({k: v for k, v in sd.items() if "q_norm" not in k}, "LLAMA3", params)
    # lora_b rows (q/k output features) are permuted like the weight; lora_a is not
    assert torch.equal(
        meta["layers.0.attention.wq.lora_b.weight"],
        permute_hf_to_meta(sd["layers.0.attn.q_proj.lora_b.weight"], 4, 16),
    )
    assert torch.equal(
        meta["layers.0.attention.wq.lora_a.weight"], sd["layers.0.attn.q_proj.lora_a.weight"]
    )


def test_phi3_fused_projections_and_lora():
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}
    hf = {
        "model.layers.0.self_attn.qkv_proj.weight": torch.randn(64 + 32 + 32, 64),
        "model.layers.0.mlp.gate_up_proj.weight": torch.randn(2 * 96, 64),
        "model.layers.0.self_attn.qkv_proj.lora_a.weight": torch.randn(4, 64),
        "model.layers.0.self_attn.qkv_proj.lora_b.weight": torch.randn(128, 4),
    }
    native = hf_to_native(hf, "PHI3_MINI", cfg)
    assert native["layers.0.attn.k_proj.weight"].shape == (32, 64)
    assert torch.equal(
        native["layers.0.mlp.w3.weight"], hf["model.layers.0.mlp.gate_up_proj.weight"][96:]
    )
    assert torch.equal(
        native["layers.0.attn.v_proj.lora_a.weight"],
        hf["model.layers.0.self_attn.qkv_proj.lora_a.weight"],
    )
    back = native_to_hf(native, "PHI4", cfg)
    assert back.keys() == hf.keys() and all(torch.equal(back[k], hf[k]) for k in hf)
    native["layers.0.attn.k_proj.lora_a.weight"] = torch.randn(4, 64)
    # parts with their own A: one rank-3r adapter, stacked A, block-diagonal B (_peft_fused)
    block = native_to_hf(native, "PHI3_MINI", cfg)
    assert block["model.layers.0.self_attn.qkv_proj.lora_a.weight"].shape == (12, 64)
    assert block["model.layers.0.self_attn.qkv_proj.lora_b.weight"].shape == (128, 12)
    blocks = {"model.layers.0.self_attn.qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    again = hf_to_native(block, "PHI3_MINI", cfg, blocks)
    assert again.keys() == native.keys() and all(torch.equal(again[k], native[k]) for k in native)


def test_reward_head_and_errors():
    native = {"output.weight": torch.randn(1, 64), "norm.scale": torch.ones(64)}
    hf = native_to_hf(native, "REWARD")
    assert set(hf) == {"score.weight", "model.norm.weight"}
    assert hf_to_native(hf, "REWARD").keys() == native.keys()
    with pytest.raises(ValueError, match="unknown model type"):
        hf_to_native(hf, "LLAMA9")
    with pytest.raises(KeyError, match="Unexpected key"):
        hf_to_native({"model.layers.0.self_attn.rotary.weight": torch.ones(1)}, "LLAMA2")


def test_reward_model_matches_transformers_classifier(tmp_path):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForSequenceClassification(cfg).eval()
    hf.save_pretrained(tmp_path)
    config, hf_sd = read_checkpoint(tmp_path)
    spec = spec_from_hf_config(config)
    assert spec.num_classes == 1
    model = build_decoder(spec).eval()
    model.load_state_dict(hf_to_native(hf_sd, "REWARD", config))
    tokens = torch.randint(1, VOCAB, (2, 37))
    with torch.no_grad():
        expected = hf(tokens).logits  # [b, 1]: the score at the last token
        got = model(tokens)[:, -1]
    assert (got - expected).abs().max() <= 1e-5
