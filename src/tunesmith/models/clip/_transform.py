"""``CLIPImageTransform``: torchtune's tiled image transform for CLIP encoders, on torch alone
(torchvision's tensor ops that torchtune calls are reproduced in
:mod:`tunesmith.data._image_transforms`).

A PIL image -> RGB ``[C, H, W]`` scaled to ``[0, 1]`` in ``dtype`` -> the best canvas of
``possible_resolutions`` (:func:`~tunesmith.data._image_transforms.get_canvas_best_fit`) ->
resized inside it without distortion (antialiased; with ``resize_to_max_canvas=False`` no
side grows beyond ``tile_size``) and zero padded right / bottom -> ``(x - mean) / std`` ->
tiles ``[T, C, tile_size, tile_size]`` row-major, and the tile grid ``aspect_ratio [2]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tunesmith.data._image_transforms import (
    find_supported_resolutions,
    get_canvas_best_fit,
    resize_with_pad,
    tile_crop,
)

try:  # the transform takes PIL images; imported here as torchtune's module does
    from PIL import Image
except ImportError:  # pragma: no cover - Pillow comes with the vision dependencies
    Image = None

__all__ = ["CLIPImageTransform"]

logger = logging.getLogger(__name__)

_MODES = ("nearest", "nearest_exact", "bilinear", "bicubic")


def check_image_settings(
    image_mean: Sequence[float] | None,
    image_std: Sequence[float] | None,
    possible_resolutions: Sequence[Sequence[int]] | None,
    max_num_tiles: int | None,
    tile_size: int,
    resample: str,
) -> Tensor:
    """The canvases ``[n, 2]`` (height, width) the settings allow.

    Raises:
        ValueError: neither ``possible_resolutions`` nor ``max_num_tiles`` is given, only one
            of ``image_mean`` / ``image_std`` is, or ``resample`` is not a known mode.
    """
    if not possible_resolutions and not max_num_tiles:
        raise ValueError("CLIPImageTransform needs possible_resolutions or max_num_tiles")
    if (image_mean is None) != (image_std is None):
        raise ValueError("CLIPImageTransform needs both image_mean and image_std, or neither")
    if resample.lower() not in _MODES:
        raise ValueError(f"resample {resample!r} is not one of {', '.join(_MODES)}")
    if not possible_resolutions:
        possible_resolutions = find_supported_resolutions(max_num_tiles, tile_size)
    return torch.tensor(possible_resolutions).reshape(-1, 2)


def pil_to_unit_tensor(image: Any, dtype: torch.dtype) -> Tensor:
    """A PIL image -> RGB ``[3, H, W]`` in ``dtype``, ``uint8 * (1 / 255)``.

    Raises:
        TypeError: ``image`` is not a PIL image.
    """
    if Image is None:
        raise ImportError("CLIPImageTransform needs Pillow: pip install pillow")
    if not isinstance(image, Image.Image):
        raise TypeError(f"CLIPImageTransform takes a PIL image, got {type(image).__name__}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
    return pixels.to(dtype).mul_(1.0 / 255)


def normalize(image: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """``(image - mean) / std`` per channel of ``[..., C, H, W]``; unchanged without them."""
    if mean is None or std is None:
        return image
    m = torch.as_tensor(mean, dtype=image.dtype)[:, None, None]
    s = torch.as_tensor(std, dtype=image.dtype)[:, None, None]
    return (image - m) / s


class CLIPImageTransform:
    """``{"image": PIL image, ...}`` -> the sample with ``image [T, C, tile, tile]`` (in
    ``dtype``) and ``aspect_ratio [2]`` (tiles high, wide).

    Args:
        image_mean, image_std: per-channel normalisation, both or neither (None: none).
        possible_resolutions: canvases ``(height, width)``; default every grid of at most
            ``max_num_tiles`` tiles.
        tile_size: tile side in pixels.
        max_num_tiles: bound of the default canvases.
        dtype: output dtype (the image is scaled and resized in it).
        resample: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"nearest_exact"``.
        resize_to_max_canvas: upscale to the largest canvas that fits, rather than the one
            needing the least scaling (the image then grows only up to ``tile_size``).
    """

    def __init__(
        self,
        *,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        possible_resolutions: Sequence[Sequence[int]] | None = None,
        tile_size: int = 224,
        max_num_tiles: int | None = 4,
        dtype: torch.dtype = torch.bfloat16,
        resample: str = "bilinear",
        resize_to_max_canvas: bool = False,
    ) -> None:
        self.possible_resolutions = check_image_settings(
            image_mean, image_std, possible_resolutions, max_num_tiles, tile_size, resample
        )
        logger.debug("CLIPImageTransform canvases: %s", self.possible_resolutions.tolist())
        self.resize_to_max_canvas = resize_to_max_canvas
        self.mean, self.std = image_mean, image_std
        self.max_size = None if resize_to_max_canvas else tile_size
        self.dtype = dtype
        self.resample = resample.lower()
        self.tile_size = tile_size

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> Mapping[str, Any]:
        image = pil_to_unit_tensor(sample["image"], self.dtype)
        canvas = get_canvas_best_fit(
            image, self.possible_resolutions, resize_to_max_canvas=self.resize_to_max_canvas
        )
        image = resize_with_pad(image, canvas, self.resample, self.max_size)
        image = tile_crop(normalize(image, self.mean, self.std), self.tile_size)
        aspect_ratio = torch.tensor(canvas).reshape(-1) // self.tile_size
        out = sample if isinstance(sample, dict) else dict(sample)
        out.update({"image": image, "aspect_ratio": aspect_ratio})
        return out
