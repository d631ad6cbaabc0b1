"""Image transforms: tiled (Llama 3.2 Vision: canvas selection, resize, pad, normalise, tile)
and dynamic-resolution (Qwen2.5-VL: smart resize, normalise, flatten to patches).

The steps and their rounding follow ``transformers``' ``MllamaImageProcessor`` (PIL backend):
RGB uint8 -> bilinear resize (PIL) to fit the chosen canvas -> zero pad right / bottom ->
``/ 255`` -> ``(x - mean) / std`` -> split into ``tile_size`` squares, row-major.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DynamicResolutionImageTransform",
    "TiledImageTransform",
    "find_supported_resolutions",
    "get_canvas_best_fit",
    "get_inscribed_size",
    "load_image",
    "pad_dim_to_size",
    "resize_image",
    "resize_to_fit_canvas",
    "resize_with_pad",
    "smart_resize",
    "tile_crop",
]

#: CLIP's normalisation, used by Llama 3.2 Vision
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(source: Any) -> Any:
    """A PIL RGB image from a path, bytes, ``{"bytes": ...}`` / ``{"path": ...}``, a PIL image
    or an ``http(s)://`` URL. Raises ``ValueError`` naming the source when it is not one."""
    from PIL import Image

    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, dict) and (source.get("bytes") or source.get("path")):
        return load_image(source.get("bytes") or source["path"])
    elif isinstance(source, (bytes, bytearray)):
        image = _open(io.BytesIO(source), "<bytes>")
    elif isinstance(source, (str, Path)) and str(source).startswith(("http://", "https://")):
        from urllib.request import urlopen

        with urlopen(str(source), timeout=30) as response:  # noqa: S310 (http(s) only)
            image = _open(io.BytesIO(response.read()), str(source))
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ValueError(f"image file not found: {source}")
        image = _open(source, str(source))
    else:
        raise ValueError(f"cannot load an image from a {type(source).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _open(fp: Any, name: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(fp)
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image ({name}): {exc}") from None
    return image


@lru_cache(maxsize=16)
def find_supported_resolutions(max_num_tiles: int, tile_size: int) -> tuple[tuple[int, int], ...]:
    """Canvases ``(height, width)`` in pixels of every tile grid with at most ``max_num_tiles``
    tiles, in aspect-ratio-id order (``(1, 1), (1, 2), ..., (4, 1)`` tiles for 4)."""
    return tuple(
        (h * tile_size, w * tile_size)
        for h in range(1, max_num_tiles + 1)
        for w in range(1, max_num_tiles + 1)
        if h * w <= max_num_tiles
    )


def get_canvas_best_fit(
    image_hw: tuple[int, int] | Tensor,
    possible_resolutions: Sequence[tuple[int, int]] | Tensor,
    resize_to_max_canvas: bool = False,
) -> tuple[int, int]:
    """The canvas that needs the least upscaling (the most with ``resize_to_max_canvas``; or,
    when every one shrinks the image, the least downscaling), ties broken by the smallest
    area. ``image_hw`` is ``(height, width)`` or an image tensor ``[..., h, w]`` (torchtune's
    argument); ``possible_resolutions [n, 2]``. ``-> (height, width)``."""
    h, w = tuple(image_hw.shape[-2:]) if isinstance(image_hw, Tensor) else image_hw
    if isinstance(possible_resolutions, Tensor):
        possible_resolutions = possible_resolutions.tolist()
    canvases = np.asarray(possible_resolutions, dtype=np.float64)
    scales = np.minimum(canvases[:, 0] / h, canvases[:, 1] / w)
    up = scales[scales >= 1]
    if len(up):
        chosen = up.max() if resize_to_max_canvas else up.min()
    else:
        chosen = scales[scales < 1].max()
    candidates = [tuple(int(v) for v in c) for c, s in zip(canvases, scales) if s == chosen]
    return min(candidates, key=lambda c: c[0] * c[1])


def resize_to_fit_canvas(
    image_hw: tuple[int, int], canvas_hw: tuple[int, int], tile_size: int
) -> tuple[int, int]:
    """Size ``(height, width)`` to resize to: the aspect ratio kept, each side at least
    ``tile_size`` (when the canvas allows) and at most the canvas; never beyond what fits."""
    h, w = image_hw
    target_w = min(max(w, tile_size), canvas_hw[1])
    target_h = min(max(h, tile_size), canvas_hw[0])
    scale_h, scale_w = target_h / h, target_w / w
    if scale_w < scale_h:
        return min(math.floor(h * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(w * scale_h) or 1, target_w)


def get_inscribed_size(
    image_size: tuple[int, int], target_size: tuple[int, int], max_size: int | None
) -> tuple[int, int]:
    """The largest ``(height, width)`` with ``image_size``'s aspect ratio inside
    ``target_size`` (torchtune's resize-with-pad step). With ``max_size`` each side of the
    target is first bounded to ``min(max(image side, max_size), target side)``, so images
    smaller than ``max_size`` are not upscaled beyond it."""
    if len(image_size) != 2 or len(target_size) != 2:
        raise AssertionError(
            f"image_size {image_size} and target_size {target_size} must be (height, width)"
        )
    h, w = image_size
    if max_size is not None:
        target_h = min(max(h, max_size), target_size[0])
        target_w = min(max(w, max_size), target_size[1])
    else:
        target_h, target_w = target_size
    return (
        min(math.floor(h * (target_w / w)), target_h),
        min(math.floor(w * (target_h / h)), target_w),
    )


def pad_dim_to_size(input: Tensor, size: int, dim: int, *, fill: float = 0.0) -> Tensor:
    """Pad ``input`` at the end of dimension ``dim`` (non-negative) to ``size`` with
    ``fill``; the other dimensions unchanged."""
    missing = size - input.shape[dim]
    if missing < 0:
        raise AssertionError(
            f"Tensor input shape {input.shape[dim]} is larger than given size {size}"
        )
    padding = [0] * (2 * input.dim())
    padding[2 * (input.dim() - dim) - 1] = missing  # F.pad lists the last dimension first
    return torch.nn.functional.pad(input, padding, value=fill)


def tile_crop(image: Tensor, tile_size: int) -> Tensor:
    """``[C, H, W]`` (multiples of ``tile_size``) -> ``[T, C, tile_size, tile_size]`` row-major."""
    c, h, w = image.shape
    if h % tile_size or w % tile_size:
        raise ValueError(f"Image size {h}x{w} is not divisible by tile size {tile_size}")
    nh, nw = h // tile_size, w // tile_size
    tiles = image.reshape(c, nh, tile_size, nw, tile_size).permute(1, 3, 0, 2, 4)
    return tiles.reshape(nh * nw, c, tile_size, tile_size).contiguous()


class TiledImageTransform:
    """Image -> ``{"image": [T, C, tile, tile] float32, "aspect_ratio": [2] (tiles h, w)}``.

    Args:
        tile_size: tile side in pixels (560 for Llama 3.2 Vision).
        max_num_tiles: most tiles per image (4).
        image_mean, image_std: per-channel normalisation (CLIP's by default).
        resample: a PIL resampling filter name (``"bilinear"``).
    """

    def __init__(
        self,
        tile_size: int = 560,
        max_num_tiles: int = 4,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        resample: str = "bilinear",
    ):
        from PIL import Image

        self.tile_size = tile_size
        self.max_num_tiles = max_num_tiles
        self.mean = np.asarray(image_mean, dtype=np.float64)[:, None, None]
        self.std = np.asarray(image_std, dtype=np.float64)[:, None, None]
        self.resample = getattr(Image.Resampling, resample.upper())
        self.resolutions = find_supported_resolutions(max_num_tiles, tile_size)

    def __call__(self, image: Any) -> dict[str, Tensor]:
        image = load_image(image)
        w, h = image.size
        canvas = get_canvas_best_fit((h, w), self.resolutions)
        new_h, new_w = resize_to_fit_canvas((h, w), canvas, self.tile_size)
        if (new_h, new_w) != (h, w):
            image = image.resize((new_w, new_h), resample=self.resample)
        pixels = np.zeros((3, *canvas), dtype=np.float64)
        pixels[:, :new_h, :new_w] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        pixels = ((pixels / 255.0).astype(np.float32) - self.mean) / self.std
        tiles = tile_crop(torch.from_numpy(pixels.astype(np.float32)), self.tile_size)
        ratio = torch.tensor([canvas[0] // self.tile_size, canvas[1] // self.tile_size])
        return {"image": tiles, "aspect_ratio": ratio}


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Qwen2-VL's target ``(height, width)``: multiples of ``factor``, close to the input's
    aspect ratio, ``min_pixels <= h * w <= max_pixels`` (rounded, then scaled down with
    floor or up with ceil). Raises ``ValueError`` past an aspect ratio of 200."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"image of {height}x{width} pixels: aspect ratio over 200 is not supported"
        )
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


class DynamicResolutionImageTransform:
    """Image -> ``{"pixel_values": [gh * gw, C * tp * p * p] float32, "grid_thw": [3]}``.

    As ``transformers``' ``Qwen2VLImageProcessor`` (PIL backend): RGB uint8 -> bicubic
    resize to :func:`smart_resize` (``factor = patch_size * merge_size``) -> ``/ 255`` ->
    ``(x - mean) / std`` -> ``p x p`` patches, repeated ``tp`` times along time, in
    merge-unit-major order (each ``merge_size ** 2`` rows are one merged token).
    ``grid_thw = (1, gh, gw)``; the image becomes ``gh * gw / merge_size ** 2`` tokens.
    """

    def __init__(
        self,
        patch_size: int = 14,
        merge_size: int = 2,
        temporal_patch_size: int = 2,
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        resample: str = "bicubic",
    ):
        from PIL import Image

        self.patch_size, self.merge_size = patch_size, merge_size
        self.temporal_patch_size = temporal_patch_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.mean = np.asarray(image_mean, dtype=np.float64)[:, None, None]
        self.std = np.asarray(image_std, dtype=np.float64)[:, None, None]
        self.resample = getattr(Image.Resampling, resample.upper())

    def num_tokens(self, height: int, width: int) -> int:
        """Decoder tokens of an image of ``height x width`` pixels."""
        factor = self.patch_size * self.merge_size
        h, w = smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
        return (h // factor) * (w // factor)

    def __call__(self, image: Any) -> dict[str, Tensor]:
        image = load_image(image)
        w, h = image.size
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        new_h, new_w = smart_resize(h, w, p * m, self.min_pixels, self.max_pixels)
        if (new_h, new_w) != (h, w):
            image = image.resize((new_w, new_h), resample=self.resample)
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        pixels = (((pixels / 255.0).astype(np.float32) - self.mean) / self.std).astype(np.float32)
        c, gh, gw = pixels.shape[0], new_h // p, new_w // p
        x = torch.from_numpy(pixels).reshape(c, gh // m, m, p, gw // m, m, p)
        x = x.permute(1, 4, 2, 5, 0, 3, 6)[:, :, :, :, :, None]  # [gh/m, gw/m, m, m, C, 1, p, p]
        x = x.expand(*x.shape[:5], tp, p, p).reshape(gh * gw, c * tp * p * p)
        return {"pixel_values": x.contiguous(), "grid_thw": torch.tensor([1, gh, gw])}


_TORCH_MODES = {"nearest": "nearest", "nearest_exact": "nearest-exact"}


def resize_image(
    image: Tensor, size: Sequence[int], resample: Any = "bilinear", antialias: bool = True
) -> Tensor:
    """``image [..., C, H, W]`` -> ``[..., C, *size]`` as torchvision's ``resize`` of a tensor:
    bilinear / bicubic antialiased (unless ``antialias=False``; corners not aligned),
    nearest / nearest_exact plain; other
    dtypes than float32 / float64 are computed in float32 and cast back (integers rounded).
    ``resample``: a mode name or a ``torchvision.transforms.InterpolationMode``. The image is
    returned as is when it already has ``size``."""
    mode = str(getattr(resample, "value", resample)).lower().replace("-", "_")
    if mode not in ("bilinear", "bicubic", *_TORCH_MODES):
        raise ValueError(
            f"resample {resample!r} is not one of nearest, nearest_exact, bilinear, bicubic"
        )
    h, w = (int(v) for v in size)
    if tuple(image.shape[-2:]) == (h, w):
        return image
    shape, dtype = image.shape, image.dtype
    x = image.reshape(-1, *shape[-3:])
    if dtype not in (torch.float32, torch.float64):
        x = x.float()
    if mode in _TORCH_MODES:
        x = torch.nn.functional.interpolate(x, size=[h, w], mode=_TORCH_MODES[mode])
    else:
        x = torch.nn.functional.interpolate(
            x, size=[h, w], mode=mode, align_corners=False, antialias=antialias
        )
    if not dtype.is_floating_point:
        x = (x.clamp(0, 255) if mode == "bicubic" else x).round()
    return x.to(dtype).reshape(*shape[:-2], h, w)


def resize_with_pad(
    image: Tensor,
    target_size: tuple[int, int],
    resample: Any = "bilinear",
    max_size: int | None = None,
) -> Tensor:
    """torchtune's ``resize_with_pad``: resize ``image [..., H, W]`` to the largest size with
    its aspect ratio inside ``target_size`` (bounded by ``max_size``, see
    :func:`get_inscribed_size`), then zero pad right / bottom to ``target_size``."""
    inscribed = get_inscribed_size(tuple(image.shape[-2:]), tuple(target_size), max_size)
    image = resize_image(image, inscribed, resample)
    pad_h, pad_w = target_size[0] - image.shape[-2], target_size[1] - image.shape[-1]
    return torch.nn.functional.pad(image, [0, pad_w, 0, pad_h])
