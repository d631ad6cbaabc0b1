"""``generate`` answers about an image with Qwen2.5-VL: greedy tokens of a tiny random
``Qwen2_5_VLForConditionalGeneration`` equal transformers' ``generate`` (with and without the
KV cache; M-RoPE ids continue past the prompt), and the recipe runs on an ``{image, text}``
prompt."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes._qwen_vl_toys import transform_node
from tests.recipes.test_finetune_qwen_vl import (  # noqa: F401
    _ours_from,
    hf_kwargs,
    qwen_files,
    qwen_transform,
)

transformers = pytest.importorskip("transformers")
NEW = 6


def _prompt(qwen_files):  # noqa: F811
    image = str(qwen_files[2] / "dog_on_skateboard.jpg")
    return {"system": "Answer briefly.", "user": {"image": image, "text": "What is this?"}}


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv_cache", "no_cache"])
def test_greedy_tokens_equal_transformers(qwen_files, use_cache):  # noqa: F811
    from tunesmith.data._prompt import vision_prompt_batch
    from tunesmith.generation import generate

    transform = qwen_transform(qwen_files)
    batch = vision_prompt_batch(transform, _prompt(qwen_files))
    tokens = batch["tokens"]
    n_image = int(batch["encoder_input"]["image_grid_thw"].prod(-1).sum()) // 4
    assert tokens[0].tolist().count(transform.image_token_id) == n_image > 1
    ours = _ours_from(qwen_files[0])
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_files[0]).eval()
    with torch.no_grad():
        expected = hf.generate(
            **hf_kwargs(batch), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False
        )
        got = generate(
            ours,
            tokens,
            NEW,
            pad_id=transform.pad_id,
            use_cache=use_cache,
            encoder_input=batch["encoder_input"],
        )
    assert got.tolist() == expected.tolist()
    with torch.no_grad():  # not vacuous: the image changes the answer's logits
        other = dict(batch["encoder_input"])
        other["pixel_values"] = torch.randn_like(other["pixel_values"])
        with_image = ours(tokens, encoder_input=batch["encoder_input"])
        other_image = ours(tokens, encoder_input=other)
    assert (with_image[:, -1] - other_image[:, -1]).abs().max() > 1e-3


def test_generate_recipe_answers_about_an_image(qwen_files, capsys):  # noqa: F811
    from tunesmith.recipes.generate import recipe_main

    model_dir, _, _, assets, specials = qwen_files
    cfg = {
        "model": {
            "_component_": "tunesmith.models.build_from_hf",
            "checkpoint_dir_or_config": str(model_dir),
        },
        "tokenizer": transform_node(assets, specials),
        "checkpointer": {
            "_component_": "tunesmith.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir),
            "checkpoint_files": ["model.safetensors"],
            "output_dir": str(model_dir.parent / "gen_out"),
            "model_type": "QWEN2_5_VL",
        },
        "device": "cpu",
        "dtype": "fp32",
        "seed": 0,
        "prompt": _prompt(qwen_files),
        "max_new_tokens": NEW,
        "temperature": 0.0,
    }
    recipe_main(OmegaConf.create(cfg))
    assert capsys.readouterr().out.strip()  # the answer streamed to stdout


def test_left_padded_batch_equals_each_prompt_alone(qwen_files):  # noqa: F811
    """Two image prompts of different lengths, left padded into one batch: each row's greedy
    tokens equal its own run (decoding continues each row's M-RoPE ids from its own prompt:
    the rope delta is per row)."""
    from tunesmith.data._prompt import vision_prompt_batch
    from tunesmith.generation import generate, left_pad_prompts

    transform = qwen_transform(qwen_files)
    image = str(qwen_files[2] / "dog_on_skateboard.jpg")
    prompts = [
        {"user": {"image": image, "text": "What is this?"}},
        {"system": "Answer in one short sentence, please.", "user": {"image": image, "text": "?"}},
    ]
    batches = [vision_prompt_batch(transform, p) for p in prompts]
    assert batches[0]["tokens"].shape[1] != batches[1]["tokens"].shape[1]
    ours = _ours_from(qwen_files[0])
    alone = [
        generate(ours, b["tokens"], NEW, pad_id=transform.pad_id, encoder_input=b["encoder_input"])
        for b in batches
    ]
    tokens = left_pad_prompts([b["tokens"][0].tolist() for b in batches], transform.pad_id)
    enc = {
        k: torch.cat([b["encoder_input"][k] for b in batches])
        for k in ("pixel_values", "image_grid_thw")
    }
    for use_cache in (True, False):
        together = generate(
            ours, tokens, NEW, pad_id=transform.pad_id, use_cache=use_cache, encoder_input=enc
        )
        for row, single in enumerate(alone):
            assert together[row, -NEW:].tolist() == single[0, -NEW:].tolist(), (row, use_cache)
