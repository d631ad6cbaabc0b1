"""Gemma 4 text decoders against transformers' ``Gemma4ForCausalLM`` (fp32, eager).

Two tiny random models cover what is new since Gemma 3: ``e`` is E2B / E4B-like (per-layer
embeddings, the last two layers reusing shared keys / values with a double-wide MLP), ``dense``
is 31B-like (full layers with their own head width, fewer kv heads and values = keys), ``moe``
26B-A4B-like (``dense`` plus experts beside every dense MLP). All have value norms, layer scalars (randomised here), proportional RoPE on the full layers, the
sliding window and final logit soft-capping. Checked: logits (plain, left-padded,
KV-cached decoding), HF -> native -> HF bit-exact for both checkpoint layouts, build_from_hf
of a multimodal config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.models._tiny_hf import read_checkpoint
from tunesmith.models import build_decoder, build_from_hf, model_type_of, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native, native_to_hf
from tunesmith.modules import padding_to_causal_mask

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma4ForCausalLM"):  # pragma: no cover - older transformers
    pytest.skip("transformers has no Gemma 4", allow_module_level=True)

VOCAB = 160
S, F = "sliding_attention", "full_attention"
_BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    global_head_dim=32,
    sliding_window=8,
    final_logit_softcapping=5.0,
    max_position_embeddings=256,
    pad_token_id=0,
)
CONFIGS = {
    "e": dict(
        _BASE,
        num_hidden_layers=6,
        layer_types=[S, F, S, F, S, F],
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB,
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
    ),
    "dense": dict(
        _BASE,
        num_hidden_layers=4,
        layer_types=[S, S, S, F],
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        hidden_size_per_layer_input=0,
        tie_word_embeddings=False,
    ),
    "moe": dict(
        _BASE,
        num_hidden_layers=4,
        layer_types=[S, S, S, F],
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        hidden_size_per_layer_input=0,
        enable_moe_block=True,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
    ),
}


def _make(name: str, directory: Path) -> torch.nn.Module:
    cfg = transformers.Gemma4TextConfig(**CONFIGS[name])
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.Gemma4ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
        for layer in model.model.layers:
            layer.layer_scalar.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory, device):
    directory = tmp_path_factory.mktemp(f"gemma4_{request.param}")
    hf = _make(request.param, directory)
    config, hf_sd = read_checkpoint(directory)
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, model_type_of(spec), config), strict=True)
    return hf.to(device), ours.to(device), config, hf_sd


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(expected.abs().max().item(), 1.0)
    assert (got - expected).abs().max().item() <= 1e-5 * scale


def test_spec_reads_the_new_fields(pair):
    _, ours, config, _ = pair
    spec = spec_from_hf_config(config)
    assert spec.family == "GEMMA4" and spec.global_head_dim == 32 and spec.v_norm
    assert spec.rope_scaling is not None and spec.rope_scaling.rope_type == "proportional"
    if spec.kv_shared_layers:
        assert [spec.kv_sharing(i) for i in range(6)] == [
            None, None, ("store", S), ("store", F), ("reuse", S), ("reuse", F)
        ]  # fmt: skip
        assert ours.layers[4].attn.k_proj is None
        assert ours.layers[4].mlp.w1.weight.shape[0] == 2 * 96
    else:
        assert ours.layers[3].attn.v_proj is None and ours.layers[3].attn.num_kv_heads == 1
    if spec.num_experts:
        from tunesmith.modules.moe import FeedForwardWithExperts

        assert all(isinstance(la.mlp, FeedForwardWithExperts) for la in ours.layers)


def test_logits_match_transformers(pair):
    hf, ours, _, _ = pair
    tokens = torch.randint(0, VOCAB, (2, 29), generator=torch.Generator().manual_seed(1))
    tokens = tokens.to(_device(ours))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens)
    assert got.shape == expected.shape == (2, 29, VOCAB)
    _close(got, expected)


def test_left_padded_logits_match_transformers(pair):
    hf, ours, _, _ = pair
    tokens = torch.randint(3, VOCAB, (2, 29), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones(2, 29, dtype=torch.long)
    attention_mask[0, :7] = 0
    tokens[0, :7] = 0
    tokens, attention_mask = tokens.to(_device(ours)), attention_mask.to(_device(ours))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(tokens, attention_mask=attention_mask, position_ids=position_ids).logits
        got = ours(
            tokens, mask=padding_to_causal_mask(attention_mask.bool()), input_pos=position_ids
        )
    real = attention_mask.bool()
    assert torch.isfinite(got).all()
    _close(got[real], expected[real])


def test_kv_cached_decoding_matches_transformers(pair):
    hf, ours, _, _ = pair
    tokens = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))
    tokens = tokens.to(_device(ours))
    prefill = 11  # decoding runs past the sliding window of 8
    with torch.no_grad():
        out = hf(tokens[:, :prefill], use_cache=True)
        expected, cache = [out.logits], out.cache
        for t in range(prefill, tokens.shape[1]):
            out = hf(tokens[:, t : t + 1], cache=cache, use_cache=True)
            expected.append(out.logits)
            cache = out.cache
        ours.setup_caches(2, torch.float32, 32)
        got = [ours(tokens[:, :prefill])]
        got += [ours(tokens[:, t : t + 1]) for t in range(prefill, tokens.shape[1])]
        ours.reset_caches()
        again = ours(tokens[:, :prefill])
        ours.remove_caches()
    _close(torch.cat(got, 1), torch.cat(expected, 1))
    assert torch.equal(again, got[0])


def test_hf_native_hf_round_trip_is_bit_exact(pair):
    _, ours, config, hf_sd = pair
    spec = spec_from_hf_config(config)
    native = hf_to_native(hf_sd, model_type_of(spec), config)
    assert set(native) == set(ours.state_dict())
    back = native_to_hf(native, model_type_of(spec), config)
    assert sorted(back) == sorted(hf_sd)
    for key, value in hf_sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def _multimodal(config: dict, hf_sd: dict) -> tuple[dict, dict]:
    """The same text weights in ``Gemma4ForConditionalGeneration``'s layout (+ a tower key)."""
    mm_config = {"model_type": "gemma4", "text_config": config, "tie_word_embeddings": True}
    mm_sd = {
        ("model.language_model." + k[6:] if k.startswith("model.") else k): v
        for k, v in hf_sd.items()
    }
    return mm_config, mm_sd


def test_multimodal_layout_round_trips_and_builds(pair, tmp_path):
    _, ours, config, hf_sd = pair
    if not config.get("tie_word_embeddings", True):
        pytest.skip("the multimodal checkpoints tie their embeddings")
    mm_config, mm_sd = _multimodal(config, hf_sd)
    native = hf_to_native(
        {**mm_sd, "model.vision_tower.x.weight": torch.ones(1)}, "GEMMA4", mm_config
    )
    assert set(native) == set(ours.state_dict())
    back = native_to_hf(native, "GEMMA4", mm_config)
    assert sorted(back) == sorted(mm_sd)
    assert all(torch.equal(back[k], v) for k, v in mm_sd.items())
    (tmp_path / "config.json").write_text(json.dumps(mm_config))
    model = build_from_hf(tmp_path)
    model.load_state_dict(native, strict=True)


def test_shared_layer_kv_tensors_in_a_checkpoint_are_skipped(pair):
    _, ours, config, hf_sd = pair
    if not config.get("num_kv_shared_layers"):
        pytest.skip("no shared layers")
    extra = {"model.layers.5.self_attn.k_proj.weight": torch.zeros(64, 64)}
    native = hf_to_native({**hf_sd, **extra}, "GEMMA4", config)
    assert set(native) == set(ours.state_dict())


def test_per_layer_embeddings_need_tokens(pair):
    _, ours, config, _ = pair
    if not config.get("hidden_size_per_layer_input"):
        pytest.skip("no per-layer embeddings")
    with pytest.raises(ValueError, match="pass tokens"):
        ours(None, input_embeds=torch.zeros(1, 3, 64, device=_device(ours)))


def test_gradients_flow_into_shared_kv_producers_with_checkpointing(pair):
    _, ours, config, _ = pair
    if not config.get("num_kv_shared_layers"):
        pytest.skip("no shared layers")
    import copy

    from tunesmith.training.activations import apply_activation_checkpointing

    tokens = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(4))
    tokens = tokens.to(_device(ours))
    plain, wrapped = copy.deepcopy(ours).train(), copy.deepcopy(ours).train()
    apply_activation_checkpointing(wrapped)
    grads = []
    for model in (plain, wrapped):
        model(tokens).float().pow(2).mean().backward()
        grads.append(model.layers[3].attn.k_proj.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_hf_checkpointer_keeps_the_multimodal_towers(pair, tmp_path):
    """A multimodal checkpoint saved after training holds its untouched towers again."""
    from safetensors.torch import load_file, save_file

    from tunesmith.training import FullModelHFCheckpointer

    _, ours, config, hf_sd = pair
    if not config.get("tie_word_embeddings", True):
        pytest.skip("the multimodal checkpoints tie their embeddings")
    mm_config, mm_sd = _multimodal(config, hf_sd)
    mm_sd["model.vision_tower.encoder.weight"] = torch.randn(3, 2)
    src = tmp_path / "in"
    src.mkdir()
    save_file(mm_sd, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(mm_config))
    ckpt = FullModelHFCheckpointer(src, ["model.safetensors"], "GEMMA4", tmp_path / "out")
    model = build_from_hf(src)
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True)
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    written = load_file(str(out / "model.safetensors"))
    assert sorted(written) == sorted(mm_sd)
    assert all(torch.equal(written[k], v) for k, v in mm_sd.items())


def test_lora_adapters_equal_peft(pair):
    """LoRA on attention and the (dense) MLPs equals transformers + peft with the same adapter
    (the adapter keys go through the same conversion as the weights)."""
    import copy

    peft = pytest.importorskip("peft")
    from tunesmith.models import lora_settings

    hf, _, config, hf_sd = pair
    spec = spec_from_hf_config(config)
    settings = lora_settings(
        ["q_proj", "k_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True, lora_rank=4
    )
    model = build_decoder(spec, settings).eval()
    missing, unexpected = model.load_state_dict(hf_to_native(hf_sd, "GEMMA4", config), strict=False)
    assert not unexpected
    torch.manual_seed(3)
    adapter = {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items() if k in missing}
    model.load_state_dict(adapter, strict=False)
    peft_state = {}
    for key, value in native_to_hf(adapter, "GEMMA4", config).items():
        key = key.replace(".lora_a.weight", ".lora_A.weight").replace(
            ".lora_b.weight", ".lora_B.weight"
        )
        peft_state["base_model.model." + key] = value
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_cfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=targets)
    peft_model = peft.get_peft_model(copy.deepcopy(hf), peft_cfg).eval()
    result = peft.set_peft_model_state_dict(peft_model, peft_state)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]
    tokens = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(5))
    tokens = tokens.to(_device(hf))
    with torch.no_grad():
        expected = peft_model(tokens).logits
        got = model(tokens)
    _close(got, expected)
    assert (got - hf(tokens).logits).abs().max().item() > 1e-3  # the adapter acts


def test_packed_documents_equal_separate_forwards(pair):
    """``seq_lens`` (unpadded packed rows) through shared keys / values, per-layer inputs and
    the sliding window equals running each document alone."""
    _, ours, _, _ = pair
    docs = [
        torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(n)).to(
            _device(ours)
        )
        for n in (13, 6)
    ]
    with torch.no_grad():
        packed = ours(torch.cat(docs, dim=1), seq_lens=[13, 6])
        alone = torch.cat([ours(d) for d in docs], dim=1)
    _close(packed, alone)
