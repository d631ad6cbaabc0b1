"""Qwen3-VL: logits equal transformers' ``Qwen3VLForConditionalGeneration`` (one image, two
images, no image; DeepStack, interpolated positions, interleaved M-RoPE, QK-norm), HF ->
native -> HF is bit-exact, published sizes on meta equal transformers' counts."""

from __future__ import annotations

import json

import pytest
import torch

from tests.recipes._qwen_vl_toys import tiny_qwen3_vl_config
from tunesmith.models._convert_qwen_vl import qwen_vl_spec_from_hf_config
from tunesmith.models._vision_specs import get_vision_spec
from tunesmith.models.convert_weights import hf_to_native, native_to_hf
from tunesmith.models.vision_builder import build_early_fusion
from tunesmith.modules.qwen_vision import mrope_positions

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB, IMAGE, START, END = 300, 290, 292, 293
PATCH = 3 * 2 * 16 * 16


def _tiny_config(tie: bool = False):
    return tiny_qwen3_vl_config(
        vocab_size=VOCAB,
        text_layers=3,
        text_mlp=96,
        vision_layers=3,
        image_token_id=IMAGE,
        video_token_id=291,
        vision_start_token_id=START,
        vision_end_token_id=END,
        eos_token_id=None,
        pad_token_id=None,
        tie=tie,
    )


def _checkpoint(directory, tie: bool = False):
    torch.manual_seed(0)
    hf = transformers.Qwen3VLForConditionalGeneration(_tiny_config(tie)).eval()
    with torch.no_grad():  # random norms and position table, so a wrong mapping shows
        for name, p in hf.named_parameters():
            if "norm" in name or "pos_embed" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    return hf, config, safetensors_torch.load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf, config, hf_sd = _checkpoint(tmp_path_factory.mktemp("qwen3_vl"))
    spec = qwen_vl_spec_from_hf_config(config)
    ours = build_early_fusion(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, "QWEN3_VL", config), strict=True)
    return hf, ours, config, hf_sd


GRIDS = [(1, 6, 10), (1, 4, 4)]  # 15 and 4 image tokens


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
    return tokens, torch.randn(n, PATCH, generator=g), grid


def _hf_logits(hf, tokens, pixels=None, grid=None):
    kw = {} if pixels is None else dict(pixel_values=pixels, image_grid_thw=grid)
    return hf(input_ids=tokens, mm_token_type_ids=(tokens == IMAGE).int(), **kw).logits


@pytest.mark.parametrize("num_images", [1, 2, 0])
def test_logits_equal_transformers(pair, num_images):
    hf, ours, _, _ = pair
    tokens, pixels, grid = _inputs(num_images)
    with torch.no_grad():
        ref = _hf_logits(hf, tokens, pixels, grid)
        got = ours(tokens, pixels, grid)
    assert got.shape == ref.shape
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= 1e-4 * scale, float((got - ref).abs().max() / scale)


def test_deepstack_features_matter(pair):
    """Without the DeepStack residuals the logits move: the parity above covers them."""
    _, ours, _, _ = pair
    tokens, pixels, grid = _inputs(1)
    with torch.no_grad():
        full = ours(tokens, pixels, grid)
        layers, ours.encoder.deepstack_layers = ours.encoder.deepstack_layers, ()
        try:
            plain = ours(tokens, pixels, grid)
        finally:
            ours.encoder.deepstack_layers = layers
    assert (full - plain).abs().max() > 1e-3 * full.abs().max()


def test_batch_of_two_rows_equals_transformers(pair):
    hf, ours, _, _ = pair
    t0, p0, g0 = _inputs(1)
    t1, _, _ = _inputs(0, seed=2)
    g1 = torch.tensor(GRIDS[1:2])
    extra = torch.randint(3, 280, (t0.shape[1] - t1.shape[1] - 6,))
    img = [torch.tensor([START]), torch.full((4,), IMAGE), torch.tensor([END])]
    t1 = torch.cat([t1[0, :3], *img, extra, t1[0, 3:]])[None]
    tokens = torch.cat([t0, t1])
    pixels = torch.cat([p0, torch.randn(16, PATCH)])
    grid = torch.cat([g0, g1])
    with torch.no_grad():
        ref = _hf_logits(hf, tokens, pixels, grid)
        got = ours(tokens, encoder_input={"pixel_values": pixels, "image_grid_thw": grid})
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_mrope_positions_equal_transformers(pair):
    hf, _, _, _ = pair
    tokens, _, grid = _inputs(2)
    ref, _ = hf.model.get_rope_index(
        tokens, mm_token_type_ids=(tokens == IMAGE).int(), image_grid_thw=grid
    )
    assert torch.equal(mrope_positions(tokens, grid, IMAGE, 2), ref)


def test_interleaved_mrope_equals_transformers_rotary(pair):
    hf, ours, _, _ = pair
    tokens, _, grid = _inputs(2)
    pos = mrope_positions(tokens, grid, IMAGE, 2)
    x = torch.zeros(1, tokens.shape[1], 64)
    ref_cos, ref_sin = hf.model.language_model.rotary_emb(x, pos)
    cos, sin = ours.decoder.rope(pos, torch.float32)
    assert torch.equal(cos[:, 0], ref_cos) and torch.equal(sin[:, 0], ref_sin)


@pytest.mark.parametrize("tie", [False, True])
def test_hf_native_hf_bit_exact(tmp_path, tie):
    _, config, hf_sd = _checkpoint(tmp_path, tie)
    native = hf_to_native(hf_sd, "QWEN3_VL", config)
    assert any(k.startswith("encoder.deepstack_mergers.1.") for k in native)
    back = native_to_hf(native, "QWEN3_VL", config)
    assert set(back) == set(hf_sd)
    for k, v in hf_sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    model = build_early_fusion(qwen_vl_spec_from_hf_config(config))
    model.load_state_dict(native, strict=True)


# the released config.json values of each size (Qwen/Qwen3-VL-*-Instruct)
_TEXT = {
    "qwen3_vl_2b": (2048, 6144, 28, 16, True),
    "qwen3_vl_4b": (2560, 9728, 36, 32, True),
    "qwen3_vl_8b": (4096, 12288, 36, 32, False),
    "qwen3_vl_32b": (5120, 25600, 64, 64, False),
}
_VISION_SMALL = dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack=[5, 11, 17])
_VISION_LARGE = dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack=[8, 16, 24])


def _official(name: str):
    d, f, layers, heads, tie = _TEXT[name]
    v = dict(_VISION_SMALL if name in ("qwen3_vl_2b", "qwen3_vl_4b") else _VISION_LARGE)
    text = dict(
        hidden_size=d,
        intermediate_size=f,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-6,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=v["depth"],
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        deepstack_visual_indexes=v["deepstack"],
        num_heads=16,
        out_hidden_size=d,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=2304,
        hidden_act="gelu_pytorch_tanh",
    )
    return transformers.Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tie
    )


# published sizes (hub safetensors metadata of Qwen/Qwen3-VL-*-Instruct), in billions
PUBLISHED = {"qwen3_vl_2b": 2.13, "qwen3_vl_4b": 4.44, "qwen3_vl_8b": 8.77, "qwen3_vl_32b": 33.4}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_transformers_on_meta(name):
    with torch.device("meta"):
        ours = build_early_fusion(get_vision_spec(name))
        hf = transformers.Qwen3VLForConditionalGeneration(_official(name))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    assert n_ours == n_hf
    assert abs(n_ours / 1e9 - PUBLISHED[name]) < 0.01 * PUBLISHED[name]


@pytest.mark.parametrize("name", ["qwen3_vl_4b", "qwen3_vl_8b"])
def test_spec_from_config_matches_bundled_spec(name):
    spec = qwen_vl_spec_from_hf_config(_official(name).to_dict())
    bundled = get_vision_spec(name)
    assert spec.family == bundled.family == "QWEN3_VL"
    assert spec.encoder == bundled.encoder
    assert spec.decoder == bundled.decoder


def test_builders_parts_and_lora():
    from tunesmith.models import qwen3_vl

    with torch.device("meta"):
        full = qwen3_vl.qwen3_vl_2b()
        lora = qwen3_vl.lora_qwen3_vl_8b(lora_attn_modules=["q_proj", "v_proj"])
    frozen = {n for n, p in full.named_parameters() if not p.requires_grad}
    assert "encoder.pos_embed.weight" in frozen
    assert all(n.startswith("encoder.") and "merger" not in n for n in frozen)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_a" in n for n in trainable)
    mergers = ("encoder.merger.", "encoder.deepstack_mergers.")
    assert all("lora_" in n or n.startswith(mergers) for n in trainable)
    assert any(n.startswith("encoder.deepstack_mergers.2.") for n in trainable)
    assert set(lora.trainable_with_adapters) == {n for n in trainable if n.startswith(mergers)}


def test_checkpointer_round_trip_and_build_from_hf(tmp_path):
    from tunesmith.models import build_from_hf
    from tunesmith.training import FullModelHFCheckpointer

    src = tmp_path / "src"
    hf, config, hf_sd = _checkpoint(src)
    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(src),
        checkpoint_files=["model.safetensors"],
        model_type="QWEN3_VL",
        output_dir=str(tmp_path / "out"),
    )
    native = ckpt.load_checkpoint()["model"]
    model = build_from_hf(str(src)).eval()
    model.load_state_dict(native, strict=True)
    tokens, pixels, grid = _inputs(1)
    with torch.no_grad():
        ref = _hf_logits(hf, tokens, pixels, grid)
        assert (model(tokens, pixels, grid) - ref).abs().max() <= 1e-4 * ref.abs().max()
    out = ckpt.save_checkpoint({"model": native}, epoch=0)
    written = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert sorted(written) == sorted(hf_sd)
    assert all(torch.equal(written[k], v) for k, v in hf_sd.items())


def test_peft_adapter_round_trip_equals_peft_logits(tmp_path):
    """A PEFT LoRA of transformers' Qwen3-VL (decoder q/v + MLP, ViT MLP, merger and
    DeepStack mergers) loads into the native LoRA model with equal logits; native -> PEFT
    gives PEFT's file back exactly."""
    peft = pytest.importorskip("peft")
    from tunesmith.models.builder import lora_settings
    from tunesmith.models.peft_format import native_to_peft, peft_to_native
    from tunesmith.modules.peft import LoRALinear

    hf, config, hf_sd = _checkpoint(tmp_path / "base")
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj", "linear_fc1", "linear_fc2"]
    torch.manual_seed(3)
    base = transformers.Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "base")
    peft_model = peft.get_peft_model(
        base.eval(),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
    ).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_sd = safetensors_torch.load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))

    model = build_early_fusion(
        qwen_vl_spec_from_hf_config(config),
        decoder_trainable="lora",
        encoder_trainable="lora",
        fusion_trainable="lora",
        lora=lora_settings([], apply_lora_to_mlp=True, lora_rank=4, lora_alpha=8),
    )
    for layer in model.decoder.layers:  # q/v adapters on the decoder only
        for name in ("q_proj", "v_proj"):
            old = getattr(layer.attn, name)
            setattr(
                layer.attn,
                name,
                LoRALinear(old.in_features, old.out_features, rank=4, alpha=8, use_bias=False),
            )
    adapter = peft_to_native(peft_sd, "QWEN3_VL", config)
    model.load_state_dict({**hf_to_native(hf_sd, "QWEN3_VL", config), **adapter}, strict=True)
    back = native_to_peft(adapter, "QWEN3_VL", config)
    assert sorted(back) == sorted(peft_sd)
    assert all(torch.equal(back[k], v) for k, v in peft_sd.items())

    tokens, pixels, grid = _inputs(2)
    with torch.no_grad():
        expected = _hf_logits(peft_model, tokens, pixels, grid)
        plain = _hf_logits(hf, tokens, pixels, grid)
        got = model.eval()(tokens, pixels, grid)
    assert (expected - plain).abs().max() > 1e-3  # the adapter matters
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


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
