"""Qwen2.5-VL: logits equal transformers' ``Qwen2_5_VLForConditionalGeneration`` (one
image, two images, no image), HF -> native -> HF is bit-exact, published sizes on meta."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.models._convert_qwen_vl import qwen_vl_spec_from_hf_config
from tunesmith.models._vision_specs import get_vision_spec
from tunesmith.models.convert_weights import hf_to_native, native_to_hf
from tunesmith.models.vision_builder import build_early_fusion
from tunesmith.modules.qwen_vision import mrope_positions

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB, IMAGE, START, END = 300, 290, 292, 293


def _tiny_config(tie: bool = False):
    return transformers.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            tie_word_embeddings=tie,
            bos_token_id=None,
            eos_token_id=None,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,  # 2 x 2 merged tokens per window
            fullatt_block_indexes=[1],
        ),
        image_token_id=IMAGE,
        video_token_id=291,
        vision_start_token_id=START,
        vision_end_token_id=END,
        tie_word_embeddings=tie,
    )


def _checkpoint(directory, tie: bool = False):
    torch.manual_seed(0)
    hf = transformers.Qwen2_5_VLForConditionalGeneration(_tiny_config(tie)).eval()
    with torch.no_grad():  # random norm weights, so a wrong norm mapping shows
        for name, p in hf.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    return hf, config, safetensors_torch.load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf, config, hf_sd = _checkpoint(tmp_path_factory.mktemp("qwen_vl"))
    spec = qwen_vl_spec_from_hf_config(config)
    ours = build_early_fusion(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, "QWEN2_5_VL", config), strict=True)
    return hf, ours, config, hf_sd


GRIDS = [(1, 6, 10), (1, 4, 4)]  # 15 and 4 image tokens; the first has partial windows


def _inputs(num_images: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(3, 280, (5,), generator=g)]
    for t, h, w in GRIDS[:num_images]:
        parts += [torch.tensor([START]), torch.full((t * h * w // 4,), IMAGE), torch.tensor([END])]
        parts.append(torch.randint(3, 280, (4,), generator=g))
    tokens = torch.cat(parts)[None]
    if num_images == 0:
        return tokens, None, None
    grid = torch.tensor(GRIDS[:num_images])
    n = int(grid.prod(-1).sum())
    return tokens, torch.randn(n, 3 * 2 * 14 * 14, generator=g), grid


@pytest.mark.parametrize("num_images", [1, 2, 0])
def test_logits_equal_transformers(pair, num_images):
    hf, ours, _, _ = pair
    tokens, pixels, grid = _inputs(num_images)
    kw = {}
    if pixels is not None:
        kw = dict(pixel_values=pixels, image_grid_thw=grid)
    with torch.no_grad():
        ref = hf(input_ids=tokens, mm_token_type_ids=(tokens == IMAGE).int(), **kw).logits
        got = ours(tokens, pixels, grid)
    assert got.shape == ref.shape
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= 1e-4 * scale, float((got - ref).abs().max() / scale)


def test_batch_of_two_rows_equals_transformers(pair):
    """Row 0: the 15-token image, row 1: the 4-token one and more text (same length)."""
    hf, ours, _, _ = pair
    t0, p0, g0 = _inputs(1)
    t1, _, _ = _inputs(0, seed=2)
    g1 = torch.tensor(GRIDS[1:2])
    extra = torch.randint(3, 280, (t0.shape[1] - t1.shape[1] - 6,))
    img = [torch.tensor([START]), torch.full((4,), IMAGE), torch.tensor([END])]
    t1 = torch.cat([t1[0, :3], *img, extra, t1[0, 3:]])[None]
    tokens = torch.cat([t0, t1])
    pixels = torch.cat([p0, torch.randn(16, p0.shape[1])])
    grid = torch.cat([g0, g1])
    with torch.no_grad():
        ref = hf(
            input_ids=tokens,
            pixel_values=pixels,
            image_grid_thw=grid,
            mm_token_type_ids=(tokens == IMAGE).int(),
        ).logits
        got = ours(tokens, encoder_input={"pixel_values": pixels, "image_grid_thw": grid})
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_mrope_positions_equal_transformers(pair):
    hf, ours, _, _ = pair
    tokens, _, grid = _inputs(2)
    ref, _ = hf.model.get_rope_index(
        tokens, mm_token_type_ids=(tokens == IMAGE).int(), image_grid_thw=grid
    )
    assert torch.equal(mrope_positions(tokens, grid, IMAGE, 2), ref)


def test_placeholder_count_mismatch_is_an_error(pair):
    _, ours, _, _ = pair
    tokens, pixels, grid = _inputs(1)
    with pytest.raises(ValueError, match="placeholder"):
        ours(tokens[:, :-6], pixels, grid)


@pytest.mark.parametrize("tie", [False, True])
def test_hf_native_hf_bit_exact(tmp_path, tie):
    _, config, hf_sd = _checkpoint(tmp_path, tie)
    native = hf_to_native(hf_sd, "QWEN2_5_VL", config)
    back = native_to_hf(native, "QWEN2_5_VL", config)
    assert set(back) == set(hf_sd)
    for k, v in hf_sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    model = build_early_fusion(qwen_vl_spec_from_hf_config(config))
    model.load_state_dict(native, strict=True)


def _official(name: str):
    """The released config.json values of each size (Qwen/Qwen2.5-VL-*-Instruct)."""
    text = {
        "qwen2_5_vl_3b": dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
        ),
        "qwen2_5_vl_7b": dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        ),
        "qwen2_5_vl_32b": dict(
            hidden_size=5120,
            intermediate_size=27648,
            num_hidden_layers=64,
            num_attention_heads=40,
            num_key_value_heads=8,
            vocab_size=152064,
        ),
        "qwen2_5_vl_72b": dict(
            hidden_size=8192,
            intermediate_size=29568,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=152064,
        ),
    }[name]
    tie = name == "qwen2_5_vl_3b"
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=text["hidden_size"],
        fullatt_block_indexes=[7, 15, 23, 31],
        window_size=112,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    text.update(
        tie_word_embeddings=tie,
        rms_norm_eps=1e-6,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    return transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tie
    )


# published sizes (model cards / hub safetensors metadata), in billions
PUBLISHED = {
    "qwen2_5_vl_3b": 3.75,
    "qwen2_5_vl_7b": 8.29,
    "qwen2_5_vl_32b": 33.45,
    "qwen2_5_vl_72b": 73.4,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_transformers_on_meta(name):
    with torch.device("meta"):
        ours = build_early_fusion(get_vision_spec(name))
        hf = transformers.Qwen2_5_VLForConditionalGeneration(_official(name))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    assert n_ours == n_hf
    assert abs(n_ours / 1e9 - PUBLISHED[name]) < 0.01 * PUBLISHED[name]


def test_spec_from_config_matches_bundled_spec():
    spec = qwen_vl_spec_from_hf_config(_official("qwen2_5_vl_7b").to_dict())
    bundled = get_vision_spec("qwen2_5_vl_7b")
    assert spec.encoder == bundled.encoder
    assert spec.decoder.replace(max_seq_len=0) == bundled.decoder.replace(max_seq_len=0)


def test_builders_parts_and_lora():
    from tunesmith.models import qwen2_5_vl

    with torch.device("meta"):
        full = qwen2_5_vl.qwen2_5_vl_3b()
        lora = qwen2_5_vl.lora_qwen2_5_vl_7b(lora_attn_modules=["q_proj", "v_proj"])
    frozen = {n for n, p in full.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("encoder.") and ".merger." not in n for n in frozen)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_a" in n for n in trainable)
    assert all("lora_" in n or n.startswith("encoder.merger.") for n in trainable)
    assert set(lora.trainable_with_adapters) == {
        n for n in trainable if n.startswith("encoder.merger.")
    }


def test_checkpointer_round_trip_and_build_from_hf(tmp_path):
    from tunesmith.models import build_from_hf
    from tunesmith.training import FullModelHFCheckpointer

    src = tmp_path / "src"
    hf, config, hf_sd = _checkpoint(src)
    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(src),
        checkpoint_files=["model.safetensors"],
        model_type="QWEN2_5_VL",
        output_dir=str(tmp_path / "out"),
    )
    native = ckpt.load_checkpoint()["model"]
    model = build_from_hf(str(src)).eval()
    model.load_state_dict(native, strict=True)
    tokens, pixels, grid = _inputs(1)
    with torch.no_grad():
        ref = hf(
            input_ids=tokens,
            pixel_values=pixels,
            image_grid_thw=grid,
            mm_token_type_ids=(tokens == IMAGE).int(),
        ).logits
        assert (model(tokens, pixels, grid) - ref).abs().max() <= 1e-4 * ref.abs().max()
    out = ckpt.save_checkpoint({"model": native}, epoch=0)
    written = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert sorted(written) == sorted(hf_sd)
    assert all(torch.equal(written[k], v) for k, v in hf_sd.items())
    lora = build_from_hf(str(src), lora_attn_modules=["q_proj", "v_proj"])
    assert any("lora_a" in n for n, _ in lora.named_parameters())


def test_peft_adapter_round_trip_equals_peft_logits(tmp_path):
    """A PEFT LoRA of transformers' Qwen2.5-VL (decoder q/v, ViT MLP, merger) loads into
    the native LoRA model with equal logits; native -> PEFT gives PEFT's file back exactly."""
    peft = pytest.importorskip("peft")
    from tunesmith.models.builder import lora_settings
    from tunesmith.models.peft_format import native_to_peft, peft_to_native
    from tunesmith.modules.peft import LoRALinear

    hf, config, hf_sd = _checkpoint(tmp_path / "base")
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj", "mlp.0", "mlp.2"]
    torch.manual_seed(3)
    base = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "base")
    peft_model = peft.get_peft_model(
        base.eval(),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
    ).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_sd = safetensors_torch.load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))

    spec = qwen_vl_spec_from_hf_config(config)
    model = build_early_fusion(
        spec,
        decoder_trainable="lora",
        encoder_trainable="lora",
        fusion_trainable="lora",
        lora=lora_settings([], apply_lora_to_mlp=True, lora_rank=4, lora_alpha=8),
    )
    # q/v adapters on the decoder only (the ViT's q/v are one fused qkv module in HF)
    for layer in model.decoder.layers:
        for name in ("q_proj", "v_proj"):
            old = getattr(layer.attn, name)
            setattr(
                layer.attn,
                name,
                LoRALinear(old.in_features, old.out_features, rank=4, alpha=8, use_bias=True),
            )
    adapter = peft_to_native(peft_sd, "QWEN2_5_VL", config)
    model.load_state_dict({**hf_to_native(hf_sd, "QWEN2_5_VL", config), **adapter}, strict=True)
    back = native_to_peft(adapter, "QWEN2_5_VL", config)
    assert sorted(back) == sorted(peft_sd)
    assert all(torch.equal(back[k], v) for k, v in peft_sd.items())

    tokens, pixels, grid = _inputs(2)
    kw = dict(pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=(tokens == IMAGE).int())
    with torch.no_grad():
        expected = peft_model(input_ids=tokens, **kw).logits
        plain = hf(input_ids=tokens, **kw).logits
        got = model.eval()(tokens, pixels, grid)
    assert (expected - plain).abs().max() > 1e-3  # the adapter matters
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_vit_qkv_adapters_have_no_hf_form(pair):
    with pytest.raises(ValueError, match="fused qkv"):
        native_to_hf(
            {"encoder.layers.0.attn.q_proj.lora_a.weight": torch.zeros(1)}, "QWEN2_5_VL", pair[2]
        )


def test_greedy_decoding_with_kv_cache_equals_transformers_generate(pair):
    hf, ours, _, _ = pair
    tokens, pixels, grid = _inputs(2)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=tokens,
            pixel_values=pixels,
            image_grid_thw=grid,
            mm_token_type_ids=(tokens == IMAGE).int(),
            max_new_tokens=6,
            do_sample=False,
        )[0, tokens.shape[1] :]
        ours.decoder.setup_caches(1, torch.float32, max_seq_len=64)
        try:
            logits = ours(tokens, pixels, grid)
            out = []
            for _ in range(6):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                out.append(int(nxt))
                logits = ours(nxt)
        finally:
            ours.decoder.remove_caches()
    assert out == ref.tolist()


def test_tiny_lora_training_loss_falls():
    """Transform -> collate -> model -> loss: 20 AdamW steps on two image+text samples."""
    import numpy as np
    from PIL import Image

    from tunesmith.data import padded_collate_image_patches
    from tunesmith.data._image_transforms import DynamicResolutionImageTransform
    from tunesmith.models.builder import lora_settings

    spec = qwen_vl_spec_from_hf_config(_tiny_config().to_dict())
    torch.manual_seed(0)
    model = build_early_fusion(
        spec,
        decoder_trainable="lora",
        lora=lora_settings(["q_proj", "v_proj"], apply_lora_to_mlp=True, lora_rank=8),
    )
    transform = DynamicResolutionImageTransform(min_pixels=28 * 28, max_pixels=56 * 56)
    rng = np.random.default_rng(0)
    samples = []
    for i, (h, w) in enumerate([(40, 60), (60, 30)]):
        image = transform(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        n = int(image["grid_thw"].prod()) // 4
        text = torch.randint(3, 280, (6 + i,)).tolist()
        tokens = [START] + [IMAGE] * n + [END] + text
        samples.append(
            {
                "tokens": tokens,
                "labels": [-100] * (n + 2) + text,
                "encoder_input": {
                    "pixel_values": [image["pixel_values"]],
                    "grid_thw": [image["grid_thw"]],
                },
            }
        )
    batch = padded_collate_image_patches(samples)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-2)
    losses = []
    for _ in range(20):
        logits = model(batch["tokens"], encoder_input=batch["encoder_input"])
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(
        p.grad is None for n, p in model.named_parameters() if n.startswith("encoder.layers")
    )
