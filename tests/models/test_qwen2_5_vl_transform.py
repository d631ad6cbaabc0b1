"""Qwen2.5-VL image transform and prompt: equal to transformers' ``Qwen2VLImageProcessor``
(PIL backend) and ``Qwen2_5_VLProcessor``; the variable-patch collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunesmith.data import Message, padded_collate_image_patches
from tunesmith.data._image_transforms import DynamicResolutionImageTransform, smart_resize
from tunesmith.models.qwen2_5_vl import qwen2_5_vl_transform

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")


def _hf_processor(**kw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil(**kw)


def _random_image(h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return PIL.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _check(image, **kw):
    ref = _hf_processor(**kw)(images=[image], return_tensors="pt")
    ours = DynamicResolutionImageTransform(**kw)(image)
    assert torch.equal(ours["grid_thw"], ref["image_grid_thw"][0])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert (ours["pixel_values"] - ref["pixel_values"]).abs().max() <= 1e-5


def test_dog_on_skateboard_equals_transformers(assets):
    image = PIL.open(assets / "torchtune_tests" / "dog_on_skateboard.jpg").convert("RGB")
    _check(image)
    _check(image, min_pixels=64 * 28 * 28, max_pixels=256 * 28 * 28)


@pytest.mark.parametrize("hw", [(1, 1), (17, 3000), (3000, 17), (4000, 4000), (333, 517)])
def test_odd_sizes_equal_transformers(hw):
    _check(_random_image(*hw))


def test_aspect_ratio_over_200_raises_like_transformers():
    image = _random_image(10, 2500)
    with pytest.raises(ValueError, match="200"):
        _hf_processor()(images=[image])
    with pytest.raises(ValueError, match="200"):
        DynamicResolutionImageTransform()(image)


def test_smart_resize_equals_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        smart_resize as hf_smart_resize,
    )

    rng = np.random.default_rng(0)
    for h, w in rng.integers(1, 5000, (200, 2)).tolist():
        if max(h, w) / min(h, w) > 200:
            continue
        assert smart_resize(h, w) == hf_smart_resize(h, w)


@pytest.fixture(scope="module")
def tokenizer_dir(assets):
    return assets / "tokenizers" / "qwen2"


def _hf_vl_processor(tokenizer_dir, tmp_path, processor_cls=None, image_processor=None):
    """The local Qwen2 tokenizer.json holds ``[PAD<id>]`` at Qwen2.5's added-token ids: name
    them as the released Qwen2.5 tokenizer does (same ids), then build the processor
    (``processor_cls``: ``Qwen2_5_VLProcessor`` by default; Qwen3-VL's test passes its own)."""
    import json
    import shutil

    from tunesmith.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS

    by_id = {v: k for k, v in QWEN2_5_SPECIAL_TOKENS.items()}
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    for tok in data["added_tokens"]:
        if tok["id"] in by_id:
            name = by_id[tok["id"]]
            vocab = data["model"]["vocab"]
            if tok["content"] in vocab:
                vocab[name] = vocab.pop(tok["content"])
            tok["content"], tok["special"] = name, True
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    shutil.copy(tokenizer_dir / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 151655

    class ImageOnlyProcessor(processor_cls or transformers.Qwen2_5_VLProcessor):
        """No video processor: transformers' needs torchvision, absent here."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyProcessor(
        image_processor=image_processor or _hf_processor(), tokenizer=tok, video_processor=None
    )


def test_prompt_and_image_token_count_equal_processor(assets, tokenizer_dir, tmp_path):
    import jinja2

    proc = _hf_vl_processor(tokenizer_dir, tmp_path)
    dog = PIL.open(assets / "torchtune_tests" / "dog_on_skateboard.jpg").convert("RGB")
    small = _random_image(100, 260)
    ours = qwen2_5_vl_transform(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt")
    )
    messages = [
        Message(
            "user",
            [
                {"type": "image", "content": dog},
                {"type": "text", "content": "What is this? And this:"},
                {"type": "image", "content": small},
            ],
            masked=True,
        ),
        Message("assistant", "A dog on a skateboard, and noise."),
    ]
    out = ours({"messages": messages})
    # the reference: the published Qwen2.5 ChatML template, images as the VL template
    # writes them, expanded by transformers' processor
    template = (assets / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    ph = "<|vision_start|><|image_pad|><|vision_end|>"
    text = jinja2.Template(template).render(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"{ph}What is this? And this:{ph}"},
            {"role": "assistant", "content": "A dog on a skateboard, and noise."},
        ],
        add_generation_prompt=False,
    )
    ref = proc(text=[text], images=[dog, small], return_tensors="pt")
    assert out["tokens"] == ref["input_ids"][0].tolist()
    grid = torch.stack(out["encoder_input"]["grid_thw"])
    assert torch.equal(grid, ref["image_grid_thw"])
    pixels = torch.cat(out["encoder_input"]["pixel_values"])
    assert (pixels - ref["pixel_values"]).abs().max() <= 1e-5
    n_img = (torch.tensor(out["tokens"]) == ours.image_token_id).sum()
    assert n_img == (ref["input_ids"] == proc.image_token_id).sum()
    assert len(out["mask"]) == len(out["tokens"])


def test_collate_variable_patch_counts():
    t = DynamicResolutionImageTransform()
    a, b, c = t(_random_image(60, 90, 1)), t(_random_image(200, 120, 2)), t(_random_image(56, 56))
    batch = [
        {
            "tokens": [1, 2, 3],
            "labels": [1, 2, 3],
            "encoder_input": {
                "pixel_values": [a["pixel_values"], b["pixel_values"]],
                "grid_thw": [a["grid_thw"], b["grid_thw"]],
            },
        },
        {"tokens": [4, 5], "labels": [4, 5], "encoder_input": {"pixel_values": [], "grid_thw": []}},
        {
            "tokens": [6],
            "labels": [6],
            "encoder_input": {"pixel_values": [c["pixel_values"]], "grid_thw": [c["grid_thw"]]},
        },
    ]
    out = padded_collate_image_patches(batch, padding_idx=0)
    assert out["tokens"].shape == (3, 3)
    enc = out["encoder_input"]
    assert torch.equal(
        enc["image_grid_thw"], torch.stack([a["grid_thw"], b["grid_thw"], c["grid_thw"]])
    )
    assert torch.equal(
        enc["pixel_values"], torch.cat([a["pixel_values"], b["pixel_values"], c["pixel_values"]])
    )
    assert enc["pixel_values"].shape[0] == int(enc["image_grid_thw"].prod(-1).sum())


def test_image_part_count_must_match_tags(assets, tokenizer_dir):
    ours = qwen2_5_vl_transform(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt")
    )
    messages = [
        Message("user", "<|vision_start|><|image_pad|><|vision_end|> what is it?"),
        Message("assistant", "noise"),
    ]
    with pytest.raises(ValueError, match="0 image parts but the text has 1"):
        ours({"messages": messages})
