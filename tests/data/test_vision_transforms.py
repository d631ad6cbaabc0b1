"""Llama 3.2 Vision image transform, cross-attention mask and collate vs transformers'
``MllamaImageProcessor`` (PIL backend) and ``MllamaProcessor``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunesmith.data import Message
from tunesmith.data._image_transforms import CLIP_MEAN, CLIP_STD, TiledImageTransform
from tunesmith.data._vision_collate import (
    VisionCrossAttentionMask,
    padded_collate_tiled_images_and_mask,
)

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")


def _hf_processor(tile: int):
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    return MllamaImageProcessorPil(
        size={"height": tile, "width": tile},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        max_image_tiles=4,
    )


def _images(assets):
    rng = np.random.default_rng(0)
    out = {"dog": PIL.open(assets / "torchtune_tests" / "dog_on_skateboard.jpg")}
    for h, w in [(1, 1), (17, 3000), (3000, 17), (4000, 4000), (50, 130)]:
        out[f"{h}x{w}"] = PIL.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return out


@pytest.mark.parametrize("tile", [560, 56])
def test_pixels_equal_mllama_image_processor(assets, tile):
    ours, hf = TiledImageTransform(tile_size=tile, max_num_tiles=4), _hf_processor(tile)
    images = _images(assets)
    if tile == 560:  # the big canvases are slow; the real photo and the extremes suffice
        images = {k: images[k] for k in ("dog", "1x1", "17x3000")}
    for name, image in images.items():
        ref = hf(images=[[image]], return_tensors="pt")
        got = ours(image)
        tiles = got["image"].shape[0]
        assert ref["num_tiles"] == [[tiles]], name
        assert (got["image"] - ref["pixel_values"][0, 0, :tiles]).abs().max() <= 1e-5, name
        ratios = [tuple(r) for r in ours_ratios()]
        assert ratios.index(tuple(got["aspect_ratio"].tolist())) + 1 == int(
            ref["aspect_ratio_ids"][0, 0]
        ), name
        assert ref["aspect_ratio_mask"][0, 0].sum() == tiles, name


def ours_ratios():
    from tunesmith.models.vision_spec import LLAMA3_2_VISION_ASPECT_RATIOS

    return LLAMA3_2_VISION_ASPECT_RATIOS


def _llama3_vision_tokenizer(assets):
    """transformers' tokenizer for the same vocabulary, <|image|> at 128256."""
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(assets / "tokenizers" / "llama3_hf" / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    assert tok.convert_tokens_to_ids("<|image|>") == 128256
    return tok


@pytest.mark.parametrize("layout", ["one", "two", "two_adjacent", "none"])
def test_tokens_and_cross_attention_mask_equal_mllama_processor(assets, layout):
    from tunesmith.models.llama3_2_vision import llama3_2_vision_transform

    tile = 56
    images = _images(assets)
    picks = {"one": ["dog"], "two": ["dog", "50x130"], "two_adjacent": ["17x3000", "1x1"]}
    picked = [images[k] for k in picks.get(layout, [])]
    parts = [{"type": "text", "content": "Look:"}]
    for k, image in enumerate(picked):
        parts.append({"type": "image", "content": image})
        if layout != "two_adjacent":
            parts.append({"type": "text", "content": f" picture {k}."})
    parts.append({"type": "text", "content": " What is it?"})
    messages = [Message(role="user", content=parts), Message(role="assistant", content="A dog.")]
    transform = llama3_2_vision_transform(
        str(assets / "tokenizers" / "llama3" / "tokenizer.model"), image_size=tile
    )
    sample = transform({"messages": messages})
    tokens = sample["tokens"]
    assert tokens.count(128256) == len(picked)

    hf_tok = _llama3_vision_tokenizer(assets)
    processor = transformers.MllamaProcessor(image_processor=_hf_processor(tile), tokenizer=hf_tok)
    text = hf_tok.decode(tokens)
    ref = processor(
        text=[text],
        images=[picked] if picked else None,
        return_tensors="pt",
        add_special_tokens=False,
    )
    assert ref["input_ids"][0].tolist() == tokens
    if not picked:
        assert "cross_attention_mask" not in ref and sample["encoder_mask"] == []
        return
    batch = padded_collate_tiled_images_and_mask([{**sample, "labels": tokens}])
    tokens_per_tile = (tile // 14) ** 2 + 1
    expected = ref["cross_attention_mask"].bool().repeat_interleave(tokens_per_tile, dim=3)
    assert torch.equal(batch["encoder_mask"], expected.reshape(1, len(tokens), -1))
    torch.testing.assert_close(
        batch["encoder_input"]["images"], ref["pixel_values"], atol=1e-5, rtol=0
    )
    assert torch.equal(batch["encoder_input"]["aspect_ratio_mask"], ref["aspect_ratio_mask"].bool())


def test_collate_pads_images_tiles_and_masks():
    mask_fn = VisionCrossAttentionMask(tile_size=28, patch_size=14, image_token_id=9)
    img = lambda t: torch.randn(t, 3, 28, 28)  # noqa: E731
    a = mask_fn({"tokens": [1, 9, 5, 9, 6], "encoder_input": {"images": [img(2), img(1)]}})
    b = mask_fn({"tokens": [1, 9, 7], "encoder_input": {"images": [img(4)]}})
    a["encoder_input"]["aspect_ratio"] = [torch.tensor([1, 2]), torch.tensor([1, 1])]
    b["encoder_input"]["aspect_ratio"] = [torch.tensor([2, 2])]
    batch = padded_collate_tiled_images_and_mask(
        [{**a, "labels": a["tokens"]}, {**b, "labels": b["tokens"]}]
    )
    assert batch["tokens"].shape == (2, 5)
    assert batch["encoder_input"]["images"].shape == (2, 2, 4, 3, 28, 28)
    assert batch["encoder_input"]["aspect_ratio"].tolist() == [[[1, 2], [1, 1]], [[2, 2], [0, 0]]]
    mask = batch["encoder_mask"].reshape(2, 5, 2, 4, 5)
    assert mask[0, :, 0].any(-1).tolist() == [
        [False] * 4,
        [True, True, False, False],
        [True, True, False, False],
        [False] * 4,
        [False] * 4,
    ]
    assert mask[0, 3:, 1, 0].all() and not mask[0, :3, 1].any()
    assert not mask[1, :, 1].any() and not mask[1, 3:].any()
    with pytest.raises(ValueError, match="2 <\\|image\\|> tokens but the sample has 1 images"):
        mask_fn({"tokens": [9, 9], "encoder_input": {"images": [img(1)]}})
