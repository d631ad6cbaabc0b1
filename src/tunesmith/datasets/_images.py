"""Pre-flight checks of a multimodal row's images, without decoding them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.data._messages import DataRowError

__all__ = ["check_row_images"]


def _images_of(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _texts_of(value: Any) -> list[str]:
    """Every string in a text column (a string, or ShareGPT / OpenAI turns)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _texts_of(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _texts_of(v)]
    return []


def check_image_file(path: Path, column: str) -> None:
    """A :class:`DataRowError` when ``path`` is missing or not an image PIL can identify
    (reads the header only; the pixels are decoded when the row is used)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataRowError(
            f"image file {str(path)!r} does not exist",
            column=column,
            fix="fix the path in the row, or dataset.image_dir",
        )
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataRowError(
            f"image file {str(path)!r} is not a readable image ({e})",
            column=column,
            fix="replace the file or drop the row",
        ) from None


def check_row_images(
    row: Mapping[str, Any],
    column: str,
    image_dir: str | None,
    image_tag: str | None,
    text_column: str | None,
    model_sees_images: bool,
    model_placeholder: str | None = None,
) -> None:
    """Check the images in ``row[column]`` (paths relative to ``image_dir``, bytes or image
    objects) and, with ``image_tag``, that ``row[text_column]`` holds one tag per image.
    ``model_placeholder`` (the model's own image token as text, e.g. Qwen2.5-VL's
    ``<|image_pad|>``) must not be written in the row's text: the dataset puts one per image
    from ``column``, so a literal one would be an image without pixels."""
    images = _images_of(row.get(column))
    if images and not model_sees_images:
        raise DataRowError(
            "the row has an image but the model transform is text-only",
            column=column,
            fix="use a vision model's transform as tokenizer (e.g. llama3_2_vision_transform), "
            "or a text dataset",
        )
    for image in images:
        if isinstance(image, str | Path):
            path = Path(image_dir) / image if image_dir is not None else Path(image)
            check_image_file(path, column)
    if model_placeholder:
        counts = {
            key: sum(t.count(model_placeholder) for t in _texts_of(value))
            for key, value in row.items()
            if key != column
        }
        where = [key for key, n in counts.items() if n]
        if where:
            raise DataRowError(
                f"the text holds {sum(counts.values())} literal {model_placeholder!r} (the "
                f"model's image placeholder) next to {len(images)} image(s) in column "
                f"'{column}'",
                column=where[0],
                fix=f"remove {model_placeholder!r} from the text: the dataset places one per "
                "image" + (f" (where {image_tag!r} is)" if image_tag else ""),
            )
    if image_tag and text_column is not None and text_column in row:
        tags = sum(t.count(image_tag) for t in _texts_of(row[text_column]))
        if tags != len(images):
            raise DataRowError(
                f"{tags} image tag(s) {image_tag!r} but {len(images)} image(s) in column "
                f"'{column}'",
                column=text_column,
                fix="put one tag per image in the text, or fix the image column",
            )
