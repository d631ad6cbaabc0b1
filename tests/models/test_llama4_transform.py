"""``llama4_transform`` against transformers: pixels and tile grids of
``Llama4ImageProcessor`` on the real dog image, the tile-grid tokens of ``Llama4Processor``,
and prompts of the official chat template (shipped in transformers' ``processing_llama4``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.recipes._llama4_toys import SPECIALS

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def files(assets: Path, tmp_path_factory):
    from tests.recipes._llama4_toys import write_special_tokens

    specials = write_special_tokens(tmp_path_factory.mktemp("l4") / "specials.json")
    tests = assets / "torchtune_tests"
    return tests / "tiktoken_small.model", specials, tests / "dog_on_skateboard.jpg"


def _transform(files, **kw):
    from tunesmith.models.llama4 import llama4_transform

    model, specials, _ = files
    return llama4_transform(str(model), special_tokens_path=str(specials), **kw)


@pytest.mark.parametrize(("tile", "max_tiles"), [(336, 16), (112, 16), (56, 4)])
def test_pixels_match_transformers_image_processor(files, tile, max_tiles):
    """Same canvas, tiles and thumbnail, the same bf16 pixel values bit for bit."""
    pytest.importorskip("torchvision", reason="transformers' Llama4ImageProcessor needs it")
    from PIL import Image

    from tunesmith.models.llama4._transform import Llama4ImageTransform

    image = Image.open(files[2]).convert("RGB")
    size = {"height": tile, "width": tile}
    want = transformers.Llama4ImageProcessor(size=size, max_patches=max_tiles)(
        images=[image], return_tensors="pt"
    )
    got = Llama4ImageTransform(tile, max_tiles)(image)
    assert got["aspect_ratio"].tolist() == want["aspect_ratios"][0].tolist()
    assert got["image"].shape == want["pixel_values"].shape
    assert got["image"].dtype == want["pixel_values"].dtype == torch.bfloat16
    assert torch.equal(got["image"], want["pixel_values"])


def test_tile_grid_tokens_match_llama4_processor(files):
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    transform = _transform(files, image_size=56)
    for ratio in [(1, 1), (2, 3), (3, 1)]:
        want = Llama4Processor._prompt_split_image(None, ratio, 4)
        got = transform.decode(transform.tile_grid(ratio), skip_special_tokens=False)
        assert got == want


def _official(messages: list[dict], add_generation_prompt: bool) -> str:
    import jinja2
    from transformers.models.llama4.processing_llama4 import chat_template

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(chat_template).render(
        messages=messages,
        bos_token="<|begin_of_text|>",
        add_generation_prompt=add_generation_prompt,
    )


CONVERSATIONS = [
    [
        {"role": "system", "content": "  You are terse.  "},
        {"role": "user", "content": "What is 2 + 2?\n"},
        {"role": "assistant", "content": " Four."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "No."},
    ],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["system", "multi_turn"])
def test_prompts_match_the_official_chat_template(files, conversation):
    from tunesmith.data import Message

    transform = _transform(files)
    messages = [Message(role=m["role"], content=m["content"]) for m in conversation]
    tokens, mask = transform.tokenize_messages(messages)
    assert tokens == transform.tokenizer.encode_text(_official(conversation, False))
    assert len(mask) == len(tokens)
    prompt = messages[:-1] + [Message(role="assistant", content="")]
    tokens, _ = transform.tokenize_messages(prompt, add_end_tokens=False)
    assert tokens == transform.tokenizer.encode_text(_official(conversation[:-1], True))


def test_image_sample_has_the_processor_layout(files):
    """One image part becomes the tile grid where the official template puts ``<|image|>``;
    the tiles (grid + thumbnail) are what the model encodes over the ``<|patch|>`` runs."""
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    from tunesmith.data import Message

    transform = _transform(files, image_size=56, max_num_tiles=4)
    user = Message(
        role="user",
        content=[
            {"type": "image", "content": str(files[2])},
            {"type": "text", "content": "What is it?"},
        ],
    )
    sample = transform({"messages": [user, Message(role="assistant", content="A dog.")]})
    tiles = sample["encoder_input"]["images"][0]
    assert tiles.shape == (5, 3, 56, 56)  # 2 x 2 grid + thumbnail
    text = _official(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}],
            },
            {"role": "assistant", "content": "A dog."},
        ],
        False,
    ).replace("<|image|>", Llama4Processor._prompt_split_image(None, (2, 2), 4))
    assert sample["tokens"] == transform.tokenizer.encode_text(text)
    assert sample["tokens"].count(SPECIALS["<|patch|>"]) == 5 * 4
    sample["labels"] = list(sample["tokens"])  # (a dataset adds them from the mask)
    batch = transform.collate([sample, sample])
    assert batch["encoder_input"]["images"].shape == (10, 3, 56, 56)
