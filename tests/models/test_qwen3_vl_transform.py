"""Qwen3-VL image transform and prompt: equal to transformers' image processor as Qwen3-VL's
``preprocessor_config.json`` sets it (``Qwen2VLImageProcessor``, PIL backend, 16 px patches,
mean = std = 0.5, 256^2 .. 4096^2 pixels) and to ``Qwen3VLProcessor``'s image-token
expansion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.test_qwen2_5_vl_transform import _hf_vl_processor, _random_image
from tunesmith.data import Message
from tunesmith.data._image_transforms import DynamicResolutionImageTransform
from tunesmith.models.qwen3_vl import qwen3_vl_transform
from tunesmith.models.qwen3_vl._transform import QWEN3_VL_IMAGE

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")


def _hf_image_processor(**size):
    """Qwen3-VL's released preprocessor_config.json values."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": 65536, "longest_edge": 16777216, **size},
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def _check(ours, image, **size):
    ref = _hf_image_processor(**size)(images=[image], return_tensors="pt")
    got = ours(image)
    assert torch.equal(got["grid_thw"], ref["image_grid_thw"][0])
    assert got["pixel_values"].shape == ref["pixel_values"].shape
    assert (got["pixel_values"] - ref["pixel_values"]).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def tokenizer_dir(assets):
    return assets / "tokenizers" / "qwen2"


def _transform(tokenizer_dir, **kw):
    return qwen3_vl_transform(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), **kw
    )


def test_dog_on_skateboard_equals_transformers(assets, tokenizer_dir):
    image = PIL.open(assets / "torchtune_tests" / "dog_on_skateboard.jpg").convert("RGB")
    _check(_transform(tokenizer_dir).image_transform, image)
    small = _transform(tokenizer_dir, min_pixels=64 * 32 * 32, max_pixels=256 * 32 * 32)
    _check(small.image_transform, image, shortest_edge=64 * 32 * 32, longest_edge=256 * 32 * 32)


@pytest.mark.parametrize("hw", [(1, 1), (17, 3000), (3000, 17), (333, 517), (4000, 4000)])
def test_odd_sizes_equal_transformers(hw):
    _check(DynamicResolutionImageTransform(**QWEN3_VL_IMAGE), _random_image(*hw))


def _processor(tokenizer_dir, tmp_path):
    return _hf_vl_processor(
        tokenizer_dir,
        tmp_path,
        processor_cls=transformers.Qwen3VLProcessor,
        image_processor=_hf_image_processor(),
    )


def _messages(dog, small, answer: bool):
    user = Message(
        "user",
        [
            {"type": "image", "content": dog},
            {"type": "text", "content": "What is this? And this:"},
            {"type": "image", "content": small},
        ],
        masked=True,
    )
    return [user, Message("assistant", "A dog on a skateboard, and noise.")] if answer else [user]


PH = "<|vision_start|><|image_pad|><|vision_end|>"


def test_image_token_expansion_equals_processor(assets, tokenizer_dir, tmp_path):
    """Training sample with a system message: ChatML as the published Qwen2.5 template
    renders it (Qwen3-VL's is the same ChatML once a system message is given)."""
    import jinja2

    proc = _processor(tokenizer_dir, tmp_path)
    dog = PIL.open(assets / "torchtune_tests" / "dog_on_skateboard.jpg").convert("RGB")
    small = _random_image(100, 260)
    ours = _transform(tokenizer_dir)
    system = Message("system", "Answer briefly.", masked=True)
    out = ours({"messages": [system, *_messages(dog, small, answer=True)]})
    template = (assets / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    text = jinja2.Template(template).render(
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"{PH}What is this? And this:{PH}"},
            {"role": "assistant", "content": "A dog on a skateboard, and noise."},
        ],
        add_generation_prompt=False,
    )
    ref = proc(text=[text], images=[dog, small], return_tensors="pt")
    assert out["tokens"] == ref["input_ids"][0].tolist()
    assert torch.equal(torch.stack(out["encoder_input"]["grid_thw"]), ref["image_grid_thw"])
    pixels = torch.cat(out["encoder_input"]["pixel_values"])
    assert (pixels - ref["pixel_values"]).abs().max() <= 1e-5
    n_img = (torch.tensor(out["tokens"]) == ours.image_token_id).sum()
    assert n_img == (ref["input_ids"] == proc.image_token_id).sum()
    # the mm_token_type_ids the processor returns mark exactly our image tokens
    assert torch.equal(ref["mm_token_type_ids"][0] == 1, torch.tensor(out["tokens"]) == 151655)
    assert len(out["mask"]) == len(out["tokens"])


def test_inference_prompt_has_no_default_system_prompt(assets, tokenizer_dir, tmp_path):
    """Qwen3's ChatML (no default system prompt, as Qwen3-VL's template), generation prompt."""
    import jinja2

    proc = _processor(tokenizer_dir, tmp_path)
    dog = _random_image(300, 200, 3)
    small = _random_image(40, 500, 4)
    messages = [*_messages(dog, small, False), Message("assistant", "")]  # the open answer
    out = _transform(tokenizer_dir)({"messages": messages}, inference=True)
    template = (assets / "chat_templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
    text = jinja2.Template(template).render(
        messages=[{"role": "user", "content": f"{PH}What is this? And this:{PH}"}],
        add_generation_prompt=True,
    )
    assert not text.startswith("<|im_start|>system")
    ref = proc(text=[text], images=[dog, small], return_tensors="pt")
    assert out["tokens"] == ref["input_ids"][0].tolist()


def test_transform_output_runs_the_model():
    """The transform's patches fit a Qwen3-VL ViT built from the same settings."""
    from tunesmith.models._convert_qwen_vl import qwen_vl_spec_from_hf_config
    from tunesmith.models.vision_builder import build_qwen_vision_encoder

    cfg = transformers.Qwen3VLConfig(
        text_config=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=64,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0],
        ),
    )
    spec = qwen_vl_spec_from_hf_config(cfg.to_dict())
    vit = build_qwen_vision_encoder(spec.encoder, 64)
    out = DynamicResolutionImageTransform(**QWEN3_VL_IMAGE)(_random_image(300, 420))
    merged, taps = vit.encode(out["pixel_values"], out["grid_thw"][None])
    assert merged.shape == (int(out["grid_thw"].prod()) // 4, 64) and len(taps) == 1
    assert np.isfinite(merged.detach().numpy()).all()


def test_training_render_equals_processor_chat_template_but_the_empty_think_block(
    assets, tokenizer_dir, tmp_path
):
    """``Qwen3VLProcessor.apply_chat_template`` with Qwen3's published template supplied (the
    Qwen3-VL Instruct template is Qwen3's ChatML with the image parts written as ``PH``):
    our multi-turn training sample equals it except one documented difference: Qwen3's
    template writes an empty ``<think>\\n\\n</think>\\n\\n`` before the final assistant turn,
    which the Qwen3-VL *Instruct* template (a non-thinking model) does not, and neither do we."""
    proc = _processor(tokenizer_dir, tmp_path)
    dog = PIL.open(assets / "torchtune_tests" / "dog_on_skateboard.jpg").convert("RGB")
    small = _random_image(100, 260)
    ours = _transform(tokenizer_dir)
    messages = [
        *_messages(dog, small, answer=True),
        Message("user", "And the colour?", masked=True),
        Message("assistant", "Mostly grey."),
    ]
    out = ours({"messages": messages})
    conversation = [
        {"role": "user", "content": f"{PH}What is this? And this:{PH}"},
        {"role": "assistant", "content": "A dog on a skateboard, and noise."},
        {"role": "user", "content": "And the colour?"},
        {"role": "assistant", "content": "Mostly grey."},
    ]
    template = (assets / "chat_templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
    text = proc.apply_chat_template(conversation, chat_template=template, tokenize=False)
    think = "<|im_start|>assistant\n<think>\n\n</think>\n\nMostly grey."
    assert text.count(think) == 1 and "<think>" not in text.replace(think, "")
    text = text.replace(think, "<|im_start|>assistant\nMostly grey.")
    ref = proc(text=[text], images=[dog, small], return_tensors="pt")
    assert out["tokens"] == ref["input_ids"][0].tolist()
    # generation prompt: equal with nothing removed
    prompt = proc.apply_chat_template(
        conversation[:3], chat_template=template, tokenize=False, add_generation_prompt=True
    )
    gen = ours({"messages": [*messages[:3], Message("assistant", "")]}, inference=True)
    ref = proc(text=[prompt], images=[dog, small], return_tensors="pt")
    assert gen["tokens"] == ref["input_ids"][0].tolist()
