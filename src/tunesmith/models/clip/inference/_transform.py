"""``CLIPImageTransform`` for inference (torchtune's ``models.clip.inference``): the same
pixels as :class:`tunesmith.models.clip.CLIPImageTransform` in float32, with the tensor steps
in an ``nn.Module`` (``_CLIPImageTransform``) that takes the resize and canvas sizes as
tensors, so it can be exported (``torch.export``) apart from the size arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tunesmith.data._image_transforms import (
    get_canvas_best_fit,
    get_inscribed_size,
    resize_image,
    tile_crop,
)
from tunesmith.models.clip._transform import check_image_settings, normalize, pil_to_unit_tensor

__all__ = ["CLIPImageTransform"]


class _CLIPImageTransform(nn.Module):
    """``forward(image [C, H, W], target_size [2], canvas_size [2])`` -> tiles
    ``[T, C, tile, tile]`` and ``aspect_ratio [2]``: resize to ``target_size``, zero pad to
    ``canvas_size``, normalise, tile."""

    def __init__(
        self,
        resample: str,
        image_mean: Sequence[float] | None,
        image_std: Sequence[float] | None,
        tile_size: int,
        max_num_tiles: int | None,
        antialias: bool,
    ):
        super().__init__()
        self.resample, self.antialias = resample, antialias
        self.image_mean, self.image_std = image_mean, image_std
        self.tile_size, self.max_num_tiles = tile_size, max_num_tiles

    def check_variable_bounds_for_export(
        self, target_size: list[int], canvas_size: list[int], lower: int, upper: int
    ) -> None:
        """``torch._check`` the data-dependent sizes (runtime asserts under ``torch.export``)."""
        for v in canvas_size:
            torch._check(v >= lower)
            torch._check(v <= upper)
        for t, c in zip(target_size, canvas_size):
            torch._check(t >= lower)
            torch._check(t <= c)

    def forward(
        self, image: Tensor, target_size: Tensor, canvas_size: Tensor
    ) -> tuple[Tensor, Tensor]:
        th, tw = target_size.tolist()
        ch, cw = canvas_size.tolist()
        upper = self.tile_size * (self.max_num_tiles or 1)
        self.check_variable_bounds_for_export([th, tw], [ch, cw], lower=2, upper=upper)
        x = resize_image(image, (th, tw), self.resample, antialias=self.antialias)
        x = nn.functional.pad(x, [0, cw - tw, 0, ch - th])
        tiles = tile_crop(normalize(x, self.image_mean, self.image_std), self.tile_size)
        return tiles, canvas_size // self.tile_size


class CLIPImageTransform:
    """``transform(image=PIL image, **rest)`` -> ``rest`` with ``image [T, C, tile, tile]``
    (float32) and ``aspect_ratio [2]``; the arguments are the training transform's, less
    ``dtype``, plus ``antialias``."""

    def __init__(
        self,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        possible_resolutions: Sequence[Sequence[int]] | None = None,
        tile_size: int = 224,
        max_num_tiles: int | None = 4,
        resample: str = "bilinear",
        resize_to_max_canvas: bool = False,
        antialias: bool = True,
    ) -> None:
        self.possible_resolutions = check_image_settings(
            image_mean, image_std, possible_resolutions, max_num_tiles, tile_size, resample
        )
        self.resize_to_max_canvas = resize_to_max_canvas
        self.max_num_tiles = max_num_tiles
        self.image_mean, self.image_std = image_mean, image_std
        self.max_size = None if resize_to_max_canvas else tile_size
        self.resample, self.antialias, self.tile_size = resample.lower(), antialias, tile_size
        self.core_transform = _CLIPImageTransform(
            self.resample, image_mean, image_std, tile_size, max_num_tiles, antialias
        )

    def __call__(self, *, image: Any, **kwargs: Any) -> dict[str, Any]:
        pixels = pil_to_unit_tensor(image, torch.float32)
        canvas = get_canvas_best_fit(
            pixels, self.possible_resolutions, resize_to_max_canvas=self.resize_to_max_canvas
        )
        inscribed = get_inscribed_size(tuple(pixels.shape[-2:]), canvas, self.max_size)
        tiles, aspect_ratio = self.core_transform(
            pixels, torch.tensor(inscribed), torch.tensor(canvas)
        )
        return {**kwargs, "image": tiles, "aspect_ratio": aspect_ratio}
