"""Llama 4 with its early-fusion vision path against transformers'
``Llama4ForConditionalGeneration``: logits on an image + text input, the HF -> native -> HF
round trip, the ``*_trainable`` parts, the published sizes."""

from __future__ import annotations

import json

import pytest
import torch

from tests.recipes._llama4_toys import PATCH_TOKEN, TILE, write_tiny_llama4

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from safetensors.torch import load_file

    directory = write_tiny_llama4(tmp_path_factory.mktemp("llama4"))
    cfg = json.loads((directory / "config.json").read_text())
    return directory, cfg, load_file(directory / "model.safetensors")


def hf_logits(hf, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """transformers' own forward, step by step: ``Llama4ForConditionalGeneration.forward``
    of transformers 5.24 fails at its return (``image_outputs`` missing from the text
    model's output), so its steps are called as it calls them."""
    emb = hf.get_input_embeddings()(ids)
    feats = hf.get_image_features(pixel_values=pixels, return_dict=True).last_hidden_state
    projected = hf.multi_modal_projector(feats.reshape(-1, feats.shape[-1]))
    mask = hf.get_placeholder_mask(ids, inputs_embeds=emb, image_features=projected)
    return hf.language_model(inputs_embeds=emb.masked_scatter(mask, projected)).logits


def _inputs(n_tiles: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(n_tiles, 3, TILE, TILE, generator=g)
    ids = torch.randint(0, 1900, (1, 24), generator=g)
    per_tile = (TILE // 14) ** 2 // 4
    ids[0, 3 : 3 + per_tile] = PATCH_TOKEN  # across a chunk boundary (chunks of 8)
    ids[0, 10 : 10 + per_tile] = PATCH_TOKEN
    return ids, pixels


def test_hf_native_hf_round_trip_is_bit_exact(tiny):
    from tunesmith.models.convert_weights import hf_to_native, native_to_hf

    _, cfg, sd = tiny
    native = hf_to_native(sd, "LLAMA4", cfg)
    assert any(k.startswith("encoder.clip.layers.0.attn.q_proj") for k in native)
    back = native_to_hf(native, "LLAMA4", cfg)
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_logits_equal_transformers_on_image_and_text(tiny):
    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native

    directory, cfg, sd = tiny
    model = build_from_hf(str(directory)).eval()
    model.load_state_dict(hf_to_native(sd, "LLAMA4", cfg), strict=True)
    hf = transformers.Llama4ForConditionalGeneration.from_pretrained(directory).eval()
    ids, pixels = _inputs()
    with torch.no_grad():
        want = hf_logits(hf, ids, pixels)
        got = model(ids, pixels)
        blank = model(ids, torch.zeros_like(pixels))
    assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
    assert (blank - got).abs().max() > 1e-2  # the image features reached the text
    with pytest.raises(ValueError, match="placeholder"):
        model(ids, pixels[:1])


def test_trainable_parts_follow_the_vision_builders(tiny):
    from tunesmith.models import build_from_hf
    from tunesmith.modules.peft import get_adapter_params

    directory, *_ = tiny
    full = build_from_hf(str(directory), encoder_trainable=False)
    trainable = {n for n, p in full.named_parameters() if p.requires_grad}
    assert not any(n.startswith("encoder.clip.") for n in trainable)
    assert any(n.startswith("encoder.projection.") for n in trainable)
    assert any(n.startswith("decoder.layers.") for n in trainable)
    lora = build_from_hf(
        str(directory),
        lora_attn_modules=["q_proj", "v_proj"],
        apply_lora_to_output=True,
        decoder_trainable="lora",
        encoder_trainable="frozen",
        fusion_trainable="lora",
    )
    adapters = set(get_adapter_params(lora))
    assert any(n.startswith("encoder.projection.fc1.lora_a") for n in adapters)
    assert any(n.startswith("decoder.layers.0.attn.q_proj.lora_a") for n in adapters)
    assert not any(n.startswith("encoder.clip.") for n in adapters)
    trained = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trained == adapters


@pytest.mark.parametrize(
    ("name", "total"),
    [("llama4_scout_17b_16e", 109e9), ("llama4_maverick_17b_128e", 400e9)],
)
def test_published_sizes_with_the_vision_encoder(name, total):
    from tunesmith.models import llama4

    with torch.device("meta"):
        model = getattr(llama4, name)()
        lora = getattr(llama4, f"lora_{name}")(decoder_trainable="lora")
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - total) <= 0.01 * total, count  # Meta's totals, rounded to 1B
    vision = sum(p.numel() for p in model.encoder.parameters())
    assert 0.6e9 < vision < 1.0e9, vision
    assert model.encoder.clip.tile_size == 336
    assert sum(p.requires_grad for p in lora.encoder.clip.parameters()) == 0
