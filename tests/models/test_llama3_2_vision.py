"""Llama 3.2 Vision: logits equal transformers' Mllama (one image, two images, no image),
HF -> native -> HF is bit-exact (also through the checkpointer), published sizes."""

from __future__ import annotations

import pytest
import torch

from tests.models._tiny_mllama import IMAGE_TOKEN, VOCAB, make_checkpoint, read_checkpoint
from tunesmith.models._convert_vision import mllama_spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native, native_to_hf
from tunesmith.models.vision_builder import build_deep_fusion
from tunesmith.modules.fusion import expand_cross_attention_mask

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mllama")
    hf = make_checkpoint(directory)
    config, hf_sd = read_checkpoint(directory)
    spec = mllama_spec_from_hf_config(config)
    ours = build_deep_fusion(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, "LLAMA3_VISION", config), strict=True)
    return hf, ours, spec, config, hf_sd, directory


def _inputs(num_images: int, seed: int = 1):
    """Two rows; row 0 has every image, row 1 the first one only (padding images / tiles)."""
    g = torch.Generator().manual_seed(seed)
    b, s = 2, 14
    tokens = torch.randint(3, VOCAB, (b, s), generator=g)
    if num_images == 0:
        return tokens, {}
    pixels = torch.randn(b, num_images, 4, 3, 28, 28, generator=g)
    ids = torch.tensor([[6, 2][:num_images], [3, 0][:num_images]])  # 2x2, 1x2 | 1x3, pad
    tiles = {6: 4, 2: 2, 3: 3, 0: 0}
    ar_mask = torch.zeros(b, num_images, 4, dtype=torch.long)
    cross = torch.zeros(b, s, num_images, 4, dtype=torch.long)
    starts = [2, 8]
    for row in range(b):
        for k in range(num_images):
            n = tiles[int(ids[row, k])]
            ar_mask[row, k, :n] = 1
            if n:
                tokens[row, starts[k]] = IMAGE_TOKEN
                cross[row, starts[k] :, k, :n] = 1  # a token sees the images before it
    ar_mask[1, num_images - 1, 0] |= int(num_images > 1)  # the processor's padding image
    pixels = pixels * ar_mask[..., None, None, None]
    hf_kw = dict(
        pixel_values=pixels,
        aspect_ratio_ids=ids,
        aspect_ratio_mask=ar_mask,
        cross_attention_mask=cross,
    )
    return tokens, hf_kw


@pytest.mark.parametrize("num_images", [1, 2, 0])
def test_logits_match_transformers(pair, num_images):
    hf, ours, spec, *_ = pair
    tokens, kw = _inputs(num_images)
    with torch.no_grad():
        expected = hf(input_ids=tokens, **kw).logits
        if kw:
            got = ours(
                tokens,
                encoder_input=dict(
                    images=kw["pixel_values"],
                    aspect_ratio_ids=kw["aspect_ratio_ids"],
                    aspect_ratio_mask=kw["aspect_ratio_mask"],
                ),
                encoder_mask=expand_cross_attention_mask(
                    kw["cross_attention_mask"], spec.encoder.tokens_per_tile
                ),
            )
        else:
            got = ours(tokens)
    assert got.shape == expected.shape == (2, 14, VOCAB)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-4 * scale


def test_image_changes_the_logits(pair):
    """The check above is not vacuous: the image path changes the text logits."""
    _, ours, spec, *_ = pair
    tokens, kw = _inputs(1)
    encoder_input = dict(images=kw["pixel_values"], aspect_ratio_ids=kw["aspect_ratio_ids"])
    mask = expand_cross_attention_mask(kw["cross_attention_mask"], spec.encoder.tokens_per_tile)
    with torch.no_grad():
        with_image = ours(tokens, encoder_input=encoder_input, encoder_mask=mask)
        text_only = ours(tokens)
    assert (with_image - text_only).abs().max() > 1e-3


def test_aspect_ratio_pairs_equal_ids(pair):
    """torchtune's ``aspect_ratio`` (tiles high, wide) input selects the same embeddings."""
    _, ours, spec, *_ = pair
    tokens, kw = _inputs(1)
    ratios = torch.tensor([[[2, 2]], [[1, 3]]])
    mask = expand_cross_attention_mask(kw["cross_attention_mask"], spec.encoder.tokens_per_tile)
    with torch.no_grad():
        by_id = ours(
            tokens,
            encoder_input=dict(
                images=kw["pixel_values"],
                aspect_ratio_ids=kw["aspect_ratio_ids"],
                aspect_ratio_mask=kw["aspect_ratio_mask"],
            ),
            encoder_mask=mask,
        )
        by_ratio = ours(
            tokens,
            encoder_input=dict(images=kw["pixel_values"], aspect_ratio=ratios),
            encoder_mask=mask,
        )
    torch.testing.assert_close(by_ratio, by_id, rtol=0, atol=0)


def test_hf_native_hf_round_trip_is_bit_exact(pair):
    _, ours, _, config, hf_sd, _ = pair
    native = hf_to_native(hf_sd, "LLAMA3_VISION", config)
    assert set(native) == set(ours.state_dict())
    back = native_to_hf(native, "LLAMA3_VISION", config)
    assert sorted(back) == sorted(hf_sd)
    for key, value in hf_sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_checkpointer_round_trip(pair, tmp_path):
    from safetensors.torch import load_file

    from tunesmith.training import FullModelHFCheckpointer

    *_, hf_sd, directory = pair
    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(directory),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_VISION",
        output_dir=str(tmp_path),
    )
    native = ckpt.load_checkpoint()["model"]
    out = ckpt.save_checkpoint({"model": native}, epoch=0)
    written = load_file(str(out / "model.safetensors"))
    assert sorted(written) == sorted(hf_sd)
    assert all(torch.equal(written[k], v) for k, v in hf_sd.items())


def _official(text_layers: int, cross: list[int], **text: int):
    """The released configs' numbers (meta-llama/Llama-3.2-{11B,90B}-Vision config.json)."""
    t = transformers
    return t.MllamaConfig(
        vision_config=t.MllamaVisionConfig(image_size=560),  # the rest: released defaults
        text_config=t.MllamaTextConfig(
            vocab_size=128_256,
            num_hidden_layers=text_layers,
            cross_attention_layers=cross,
            num_key_value_heads=8,
            **text,
        ),
    )


@pytest.mark.parametrize(
    "name, published, config",
    [
        ("11b", 10.67e9, lambda: _official(40, list(range(3, 40, 5)))),
        (
            "90b",
            88.6e9,
            lambda: _official(
                100,
                list(range(3, 100, 5)),
                hidden_size=8192,
                intermediate_size=28_672,
                num_attention_heads=64,
            ),
        ),
    ],
)
def test_parameter_counts(name, published, config):
    from tunesmith.models import llama3_2_vision

    with torch.device("meta"):
        hf = transformers.MllamaForConditionalGeneration(config())
        ours = getattr(llama3_2_vision, f"llama3_2_vision_{name}")()
        lora = getattr(llama3_2_vision, f"lora_llama3_2_vision_{name}")()
    hf_count = sum(p.numel() for p in hf.parameters())
    count = sum(p.numel() for p in ours.parameters())
    assert count == hf_count
    assert abs(count - published) / published < 0.001
    adapters = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n in adapters)
    assert not any(n.startswith("decoder.") and ".fusion_layer." not in n for n in adapters)


def test_trainable_parts(pair):
    model = build_deep_fusion(
        pair[2], decoder_trainable=False, encoder_trainable="frozen", fusion_trainable=True
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "decoder.tok_embeddings.fusion_embedding.weight" in trainable
    assert "encoder.projection.output.weight" in trainable
    assert "decoder.layers.1.fusion_layer.attn.q_proj.weight" in trainable
    assert "decoder.layers.1.attn.q_proj.weight" not in trainable
    assert "decoder.tok_embeddings.weight" not in trainable
    assert not any(n.startswith("encoder.clip.") for n in trainable)
    with pytest.raises(ValueError, match="decoder_trainable"):
        build_deep_fusion(pair[2], decoder_trainable="sometimes")


def test_lora_recipe_rule_keeps_full_parts_training(pair):
    """A LoRA recipe trains ``get_adapter_params``: LoRA matrices plus the parts set 'full'."""
    from tunesmith.models.builder import lora_settings
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params

    lora = lora_settings(["q_proj", "v_proj"], lora_rank=4)
    model = build_deep_fusion(
        pair[2],
        decoder_trainable="frozen",
        encoder_trainable="lora",
        fusion_trainable="full",
        lora=lora,
    )
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    set_trainable_params(model, get_adapter_params(model))
    after = {n for n, p in model.named_parameters() if p.requires_grad}
    assert after == before
    assert "encoder.projection.output.weight" in after
    assert "encoder.clip.layers.0.attn.q_proj.lora_a.weight" in after
    assert "encoder.clip.layers.0.attn.q_proj.weight" not in after
    assert not any(n.startswith("decoder.") and "fusion" not in n for n in after)


def test_kv_cached_decoding_equals_full_forward(pair):
    """Prefill with the image, then one token at a time: the logits of the full forward."""
    _, ours, spec, *_ = pair
    tokens, kw = _inputs(2)
    encoder_input = dict(
        images=kw["pixel_values"],
        aspect_ratio_ids=kw["aspect_ratio_ids"],
        aspect_ratio_mask=kw["aspect_ratio_mask"],
    )
    mask = expand_cross_attention_mask(kw["cross_attention_mask"], spec.encoder.tokens_per_tile)
    prompt = 10
    with torch.no_grad():
        full = ours(tokens, encoder_input=encoder_input, encoder_mask=mask)
        ours.setup_caches(batch_size=2, dtype=torch.float32, encoder_max_seq_len=1, max_seq_len=32)
        try:
            steps = [
                ours(
                    tokens[:, :prompt],
                    encoder_input=encoder_input,
                    encoder_mask=mask[:, :prompt],
                )
            ]
            for i in range(prompt, tokens.shape[1]):
                steps.append(ours(tokens[:, i : i + 1]))
        finally:
            ours.remove_caches()
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_peft_adapter_round_trip_equals_peft_logits(pair, tmp_path):
    """A PEFT LoRA adapter of transformers' Mllama loads into the native LoRA model with equal
    logits, and native -> PEFT gives back PEFT's file bit for bit."""
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file

    from tunesmith.models.builder import lora_settings
    from tunesmith.models.peft_format import native_to_peft, peft_to_native

    hf, _, spec, config, hf_sd, directory = pair
    lora_cfg = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    torch.manual_seed(3)
    hf_copy = transformers.MllamaForConditionalGeneration.from_pretrained(directory).eval()
    peft_model = peft.get_peft_model(hf_copy, lora_cfg).eval()
    peft_model.save_pretrained(tmp_path)
    peft_sd = load_file(str(tmp_path / "adapter_model.safetensors"))

    model = build_deep_fusion(
        spec,
        decoder_trainable="lora",
        encoder_trainable="lora",
        fusion_trainable="lora",
        lora=lora_settings(["q_proj", "v_proj"], lora_rank=4, lora_alpha=8),
    ).eval()
    adapter = peft_to_native(peft_sd, "LLAMA3_VISION", config)
    weights = {**hf_to_native(hf_sd, "LLAMA3_VISION", config), **adapter}
    model.load_state_dict(weights, strict=True)
    back = native_to_peft(adapter, "LLAMA3_VISION", config)
    assert sorted(back) == sorted(peft_sd)
    assert all(torch.equal(back[k], v) for k, v in peft_sd.items())

    tokens, kw = _inputs(1)
    with torch.no_grad():
        expected = peft_model(input_ids=tokens, **kw).logits
        got = model(
            tokens,
            encoder_input=dict(
                images=kw["pixel_values"],
                aspect_ratio_ids=kw["aspect_ratio_ids"],
                aspect_ratio_mask=kw["aspect_ratio_mask"],
            ),
            encoder_mask=expand_cross_attention_mask(
                kw["cross_attention_mask"], spec.encoder.tokens_per_tile
            ),
        )
        base = hf(input_ids=tokens, **kw).logits
    assert (expected - base).abs().max() > 1e-3  # the adapter matters
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_build_from_hf_builds_the_vision_model(pair):
    from tunesmith.models import build_from_hf

    *_, hf_sd, directory = pair
    model = build_from_hf(directory)
    config = read_checkpoint(directory)[0]
    model.load_state_dict(hf_to_native(hf_sd, "LLAMA3_VISION", config), strict=True)
    lora = build_from_hf(directory, lora_attn_modules=["q_proj"], lora_rank=2)
    assert hasattr(lora.encoder.clip.layers[0].attn.q_proj, "lora_a")
    assert hasattr(lora.decoder.layers[1].fusion_layer.attn.q_proj, "lora_a")
