"""Bad image rows for Qwen2.5-VL: too many / too few ``<image>`` tags for the row's images, or
the model's own ``<|image_pad|>`` written in the text, is one error naming the row and
column, raised when the dataset is built (before any weights load)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.recipes.conftest import base_config
from tests.recipes.test_finetune_qwen_vl import (  # noqa: F401
    qwen_files,
    qwen_transform,
    qwen_vl_config,
)
from tunesmith.data import DataRowError

pytest.importorskip("PIL")


def _chat_rows(tags_in_row_1: int) -> list[dict]:
    good = {
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A dog."},
        ],
        "image": "dog_on_skateboard.jpg",
    }
    bad = json.loads(json.dumps(good))
    bad["conversations"][0]["value"] = "<image>" * tags_in_row_1 + "\nWhat is it?"
    return [good, bad, good]


@pytest.mark.parametrize("tags", [2, 0], ids=["too_many", "too_few"])
def test_tag_count_mismatch_names_the_row(qwen_files, tmp_path, tags):  # noqa: F811
    from tunesmith.datasets.multimodal import llava_instruct_dataset

    data = tmp_path / "chat.json"
    data.write_text(json.dumps(_chat_rows(tags)))
    with pytest.raises(DataRowError) as err:
        llava_instruct_dataset(
            qwen_transform(qwen_files),
            source="json",
            data_files=str(data),
            image_dir=str(qwen_files[2]),
        )
    message = str(err.value)
    assert "row 1" in message and "'conversations'" in message
    assert f"{tags} image tag(s) '<image>' but 1 image(s)" in message


def test_good_rows_tokenize_with_one_image_run(qwen_files, tmp_path):  # noqa: F811
    """The control: the same rows with one tag each give one image's placeholder run."""
    from tunesmith.datasets.multimodal import llava_instruct_dataset

    data = tmp_path / "chat.json"
    data.write_text(json.dumps(_chat_rows(1)))
    transform = qwen_transform(qwen_files)
    ds = llava_instruct_dataset(
        transform, source="json", data_files=str(data), image_dir=str(qwen_files[2])
    )
    sample = ds[1]
    (grid,) = sample["encoder_input"]["grid_thw"]
    assert sample["tokens"].count(transform.image_token_id) == int(grid.prod()) // 4


def test_literal_image_pad_in_vqa_text_names_the_row(qwen_files, tmp_path):  # noqa: F811
    """Through the finetune recipe: the error comes while the dataset is built."""
    from tunesmith.recipes.finetune import recipe_main

    model_dir, _, images, assets, specials = qwen_files
    rows = [{"input": "What?", "output": "A dog.", "image": "dog_on_skateboard.jpg"}] * 4
    rows[2] = {**rows[2], "input": "<|image_pad|> What is this?"}
    data = tmp_path / "vqa.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "out"
    over = qwen_vl_config(model_dir, data, images, assets, specials)
    over["dataset"]["data_files"] = str(data)
    with pytest.raises(DataRowError) as err:
        recipe_main(OmegaConf.create(base_config(out, model_dir, data, **over)))
    message = str(err.value)
    assert "row 2, column 'input'" in message and "'<|image_pad|>'" in message
    assert not (out / "logs" / "log.jsonl").exists()  # before training started
