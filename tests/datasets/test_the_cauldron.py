"""the_cauldron_dataset on local files: lazy image + text samples that collate for the model."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.data import padded_collate_tiled_images_and_mask

pytest.importorskip("PIL")


def test_local_cauldron_rows_tokenize_and_collate(assets, tmp_path):
    from tunesmith.datasets.multimodal import the_cauldron_dataset
    from tunesmith.models.llama3_2_vision import llama3_2_vision_transform

    dog = str(assets / "torchtune_tests" / "dog_on_skateboard.jpg")
    rows = [
        {"images": [dog], "texts": [{"user": "What is this?", "assistant": "A dog."}]},
        {
            "images": [dog, dog],
            "texts": [
                {"user": "Two pictures?", "assistant": "Yes."},
                {"user": "Same?", "assistant": "Same dog."},
            ],
        },
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    transform = llama3_2_vision_transform(
        str(assets / "tokenizers" / "llama3" / "tokenizer.model"), image_size=56
    )
    ds = the_cauldron_dataset(
        transform, subset="ocrvqa", source="json", data_files=str(tmp_path / "rows.json")
    )
    assert len(ds) == 2
    samples = [ds[0], ds[1]]
    assert [s["tokens"].count(128256) for s in samples] == [1, 2]
    assert all(lab == -100 for lab in samples[0]["labels"][:5])  # the user turn is masked
    batch = padded_collate_tiled_images_and_mask(samples)
    b, s = batch["tokens"].shape
    assert batch["encoder_input"]["images"].shape[:3] == (2, 2, 4)
    assert batch["encoder_mask"].shape == (b, s, 2 * 4 * ((56 // 14) ** 2 + 1))
    assert batch["encoder_mask"].dtype == torch.bool


def test_missing_image_file_names_the_row(assets, tmp_path):
    from tunesmith.datasets.multimodal import the_cauldron_dataset
    from tunesmith.models.llama3_2_vision import llama3_2_vision_transform

    rows = [{"images": [str(tmp_path / "nope.jpg")], "texts": [{"user": "?", "assistant": "!"}]}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    transform = llama3_2_vision_transform(
        str(assets / "tokenizers" / "llama3" / "tokenizer.model"), image_size=56
    )
    with pytest.raises(ValueError, match="row 0, column 'images': image file .*nope.jpg"):
        the_cauldron_dataset(  # checked when the dataset is built, before any training
            transform, subset="ocrvqa", source="json", data_files=str(tmp_path / "rows.json")
        )
