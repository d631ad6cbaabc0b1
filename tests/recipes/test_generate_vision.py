"""``generate`` answers about an image: greedy tokens of a tiny random Mllama equal
transformers' ``MllamaForConditionalGeneration.generate`` (with and without the KV cache),
and the recipe runs on torchtune's ``{image, text}`` prompt."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes.test_finetune_vision import hf_inputs, vision_files  # noqa: F401

transformers = pytest.importorskip("transformers")
NEW = 6


def _transform(vision_files):  # noqa: F811
    from tunesmith.models.llama3_2_vision import Llama3VisionTransform

    _, _, _, assets, specials = vision_files
    return Llama3VisionTransform(
        str(assets / "tiktoken_small.model"),
        special_tokens_path=str(specials),
        tile_size=28,
        patch_size=14,
        max_num_tiles=4,
    )


def _prompt(vision_files):  # noqa: F811
    image = str(vision_files[2] / "dog_on_skateboard.jpg")
    return {"system": "Answer briefly.", "user": {"image": image, "text": "What is this?"}}


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv_cache", "no_cache"])
def test_greedy_tokens_equal_transformers(vision_files, use_cache):  # noqa: F811
    from safetensors.torch import load_file

    from tunesmith.data._prompt import vision_prompt_batch
    from tunesmith.generation import generate
    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native

    model_dir = vision_files[0]
    import json

    config = json.loads((model_dir / "config.json").read_text())
    ours = build_from_hf(str(model_dir)).eval()
    ours.load_state_dict(
        hf_to_native(load_file(model_dir / "model.safetensors"), "LLAMA3_VISION", config)
    )
    transform = _transform(vision_files)
    batch = vision_prompt_batch(transform, _prompt(vision_files))
    assert batch["tokens"][0].tolist().count(transform.tokenizer.image_id) == 1
    hf = transformers.MllamaForConditionalGeneration.from_pretrained(model_dir).eval()
    kw = hf_inputs({**batch, "labels": batch["tokens"]})
    with torch.no_grad():
        expected = hf.generate(**kw, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        got = generate(
            ours,
            batch["tokens"],
            NEW,
            pad_id=transform.pad_id,
            use_cache=use_cache,
            encoder_input=batch["encoder_input"],
            encoder_mask=batch["encoder_mask"],
        )
    assert got.tolist() == expected.tolist()
    with torch.no_grad():  # not vacuous: the image changes the answer's logits
        text_only = ours(batch["tokens"])
        with_image = ours(
            batch["tokens"],
            encoder_input=batch["encoder_input"],
            encoder_mask=batch["encoder_mask"],
        )
    assert (with_image - text_only).abs().max() > 1e-3


def test_generate_recipe_answers_about_an_image(vision_files, capsys):  # noqa: F811
    from tunesmith.recipes.generate import recipe_main

    model_dir, _, _, assets, specials = vision_files
    cfg = {
        "model": {
            "_component_": "tunesmith.models.build_from_hf",
            "checkpoint_dir_or_config": str(model_dir),
        },
        "tokenizer": {
            "_component_": "tunesmith.models.llama3_2_vision.Llama3VisionTransform",
            "path": str(assets / "tiktoken_small.model"),
            "special_tokens_path": str(specials),
            "tile_size": 28,
            "patch_size": 14,
            "max_num_tiles": 4,
        },
        "checkpointer": {
            "_component_": "tunesmith.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir),
            "checkpoint_files": ["model.safetensors"],
            "output_dir": str(model_dir.parent / "gen_out"),
            "model_type": "LLAMA3_VISION",
        },
        "device": "cpu",
        "dtype": "fp32",
        "seed": 0,
        "prompt": _prompt(vision_files),
        "max_new_tokens": NEW,
        "temperature": 0.0,
    }
    recipe_main(OmegaConf.create(cfg))
    assert capsys.readouterr().out.strip()  # the answer streamed to stdout
