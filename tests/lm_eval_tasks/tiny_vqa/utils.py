"""A tiny local image+question lm-eval task: rows in tiny_vqa.json, images in images/."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_rows(**kwargs):
    """The rows as a ``DatasetDict`` with one ``test`` split (no hub, no network)."""
    import datasets

    rows = json.loads((HERE / "tiny_vqa.json").read_text())
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def doc_to_image(doc):
    """The row's images, opened from the local folder (PIL, RGB)."""
    from PIL import Image

    return [Image.open(HERE / "images" / name).convert("RGB") for name in doc["images"]]
