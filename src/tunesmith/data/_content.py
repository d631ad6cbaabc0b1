"""Message content with images placed at a text tag (torchtune's ``format_content_with_images``)."""

from __future__ import annotations

from typing import Any

__all__ = ["format_content_with_images"]


def format_content_with_images(
    content: str, *, image_tag: str, images: list[Any]
) -> list[dict[str, Any]]:
    """Split ``content`` at each ``image_tag`` into ``[{"type": "text"|"image", "content": ...}]``.

    Images go where the tags were, in order; empty text pieces are dropped.

    Raises:
        ValueError: when the number of images differs from the number of tags.
    """
    pieces = content.split(image_tag)
    if len(images) != len(pieces) - 1:
        raise ValueError(
            f"Number of images ({len(images)}) does not match number of image tags "
            f"({len(pieces) - 1}) in content: {content}"
        )
    out: list[dict[str, Any]] = []
    for i, text in enumerate(pieces):
        if text:
            out.append({"type": "text", "content": text})
        if i < len(images):
            out.append({"type": "image", "content": images[i]})
    return out
