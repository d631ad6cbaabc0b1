"""vqa_dataset, multimodal_chat_dataset, llava_instruct_dataset (torchtune's names and
arguments) on local JSON + an image folder: samples as the vision transform makes them,
images opened per row only, and bad input named by row and column before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("PIL")

from tests.recipes._vision_toys import TILE, write_special_tokens  # noqa: E402
from tunesmith.data import DataError  # noqa: E402
from tunesmith.datasets.multimodal import (  # noqa: E402
    llava_instruct_dataset,
    multimodal_chat_dataset,
    vqa_dataset,
)


@pytest.fixture
def files(tmp_path, assets):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(assets / "torchtune_tests" / "dog_on_skateboard.jpg", images / "dog.jpg")
    specials = write_special_tokens(tmp_path / "specials.json")
    return tmp_path, images, assets / "torchtune_tests", specials


@pytest.fixture
def transform(files):
    from tunesmith.models.llama3_2_vision import Llama3VisionTransform

    _, _, assets, specials = files
    return Llama3VisionTransform(
        str(assets / "tiktoken_small.model"),
        special_tokens_path=str(specials),
        tile_size=TILE,
        patch_size=14,
        max_num_tiles=4,
    )


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text(json.dumps(rows))
    return str(path)


def _chat(value: str, image: str = "dog.jpg") -> dict:
    return {
        "image": image,
        "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A dog."}],
    }


def test_vqa_sample(files, transform, monkeypatch):
    root, images, *_ = files
    data = _write(root / "vqa.json", [{"input": "What?", "output": "A dog.", "image": "dog.jpg"}])
    opened = []
    import tunesmith.data._message_transforms as mt

    real = mt.load_image
    monkeypatch.setattr(mt, "load_image", lambda *a, **k: opened.append(a) or real(*a, **k))
    ds = vqa_dataset(transform, source="json", data_files=data, image_dir=str(images))
    assert opened == []  # building the dataset opened no image for good
    sample = ds[0]
    assert len(opened) == 1
    assert sample["tokens"].count(transform.tokenizer.image_id) == 1
    assert len(sample["encoder_input"]["images"]) == 1 and len(sample["encoder_mask"]) == 1
    assert sample["encoder_input"]["images"][0].shape[-2:] == (TILE, TILE)
    trained = [t for t, lab in zip(sample["tokens"], sample["labels"]) if lab != -100]
    assert "A dog." in transform.decode(trained) and "What?" not in transform.decode(trained)


@pytest.mark.parametrize("builder", ["multimodal_chat", "llava"])
def test_chat_and_llava_samples(files, transform, builder):
    root, images, *_ = files
    data = _write(root / "chat.json", [_chat("<image>\nWhat is it?")])
    if builder == "llava":
        ds = llava_instruct_dataset(
            transform, source="json", data_files=data, image_dir=str(images)
        )
    else:
        ds = multimodal_chat_dataset(
            transform, source="json", data_files=data, image_dir=str(images), image_tag="<image>"
        )
    sample = ds[0]
    assert sample["tokens"].count(transform.tokenizer.image_id) == 1
    assert "<image>" not in transform.decode(sample["tokens"])


def _error(build) -> str:
    with pytest.raises(DataError) as info:
        build()
    return str(info.value)


def test_missing_image_file(files, transform):
    root, images, *_ = files
    rows = [{"input": "Q", "output": "A", "image": "dog.jpg"}] * 2
    rows.append({"input": "Q", "output": "A", "image": "cat.jpg"})
    data = _write(root / "vqa.json", rows)
    msg = _error(
        lambda: vqa_dataset(transform, source="json", data_files=data, image_dir=str(images))
    )
    assert "row 2" in msg and "column 'image'" in msg and "cat.jpg" in msg
    assert "\n" not in msg


def test_corrupt_jpeg(files, transform):
    root, images, *_ = files
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = [{"input": "Q", "output": "A", "image": "dog.jpg"}]
    rows.append({"input": "Q", "output": "A", "image": "broken.jpg"})
    data = _write(root / "vqa.json", rows)
    msg = _error(
        lambda: vqa_dataset(transform, source="json", data_files=data, image_dir=str(images))
    )
    assert "row 1" in msg and "column 'image'" in msg and "broken.jpg" in msg


def test_truncated_jpeg_names_the_row_when_read(files, transform):
    """A JPEG whose header is fine but whose pixels are cut off is found when its row is read."""
    root, images, *_ = files
    whole = (images / "dog.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    data = _write(root / "vqa.json", [{"input": "Q", "output": "A", "image": "cut.jpg"}])
    try:
        ds = vqa_dataset(transform, source="json", data_files=data, image_dir=str(images))
    except DataError as e:  # found up front: fine as well
        assert "row 0" in str(e) and "column 'image'" in str(e)
        return
    msg = _error(lambda: ds[0])
    assert "row 0" in msg


def test_image_tag_count_must_match(files, transform):
    root, images, *_ = files
    rows = [_chat("<image>\nWhat?"), _chat("<image> and <image>: which?")]
    data = _write(root / "chat.json", rows)
    msg = _error(
        lambda: multimodal_chat_dataset(
            transform, source="json", data_files=data, image_dir=str(images), image_tag="<image>"
        )
    )
    assert "row 1" in msg and "column 'conversations'" in msg and "2 image tag(s)" in msg


def test_image_in_a_text_only_models_dataset(files):
    from tests.recipes._recipe_toys import ByteChatTokenizer

    root, images, *_ = files
    data = _write(root / "vqa.json", [{"input": "Q", "output": "A", "image": "dog.jpg"}])
    msg = _error(
        lambda: vqa_dataset(
            ByteChatTokenizer(), source="json", data_files=data, image_dir=str(images)
        )
    )
    assert "row 0" in msg and "column 'image'" in msg and "text-only" in msg


def test_bad_image_stops_the_recipe_before_weights_load(files, tmp_path, monkeypatch):
    """The finetune recipe raises the one-line error before reading any checkpoint."""
    from omegaconf import OmegaConf

    from tests.recipes._vision_toys import vision_config
    from tests.recipes.conftest import base_config
    from tunesmith.recipes.finetune import recipe_main

    root, images, assets, specials = files
    data = _write(root / "vqa.json", [{"input": "Q", "output": "A", "image": "nope.jpg"}])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"never read")  # the data fails first
    (model_dir / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    out = tmp_path / "out"
    cfg = base_config(
        out,
        model_dir,
        Path(data),
        **vision_config(out, model_dir, Path(data), images, assets, specials),
    )
    with pytest.raises(DataError, match="row 0, column 'image'"):
        recipe_main(OmegaConf.create(cfg))


def test_image_in_a_text_datasets_rows(files):
    """A text dataset builder (chat_dataset, OpenAI style) whose rows carry images, with a
    text-only tokenizer: refused when the dataset is built, naming the row (not dropped)."""
    from tests.recipes._recipe_toys import ByteChatTokenizer
    from tunesmith.datasets import chat_dataset

    root, images, *_ = files
    image = {"type": "image_url", "image_url": {"url": str(images / "dog.jpg")}}
    user = {"role": "user", "content": [{"type": "text", "text": "What?"}, image]}
    text_only = {
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    }
    rows = [text_only, {"messages": [user, {"role": "assistant", "content": "A dog."}]}]
    data = _write(root / "rows.json", rows)
    ds = chat_dataset(
        ByteChatTokenizer(),
        source="json",
        data_files=data,
        conversation_column="messages",
        conversation_style="openai",
    )
    msg = _error(ds.drop_untrained_rows)  # what the recipes' build_datasets runs first
    assert "row 1" in msg and "text-only" in msg
