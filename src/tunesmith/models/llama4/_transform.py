"""``llama4_transform``: Llama 4 tokenizer + tiled image transform (torchtune's
``Llama4Transform`` / transformers' ``Llama4ImageProcessor`` + ``Llama4Processor``).

An image is fitted to the best canvas of at most ``max_num_tiles`` ``tile_size`` tiles
(least upscaling, never beyond ``tile_size`` per side, aspect ratio kept), zero padded,
normalised with mean = std = 0.5 (in bf16) and cut into tiles row-major; an image of more
than one tile gets a global thumbnail (the whole image resized to one tile) as its last tile:
``Llama4ImageProcessor``'s pixels exactly. Its
``<|image|>`` placeholder in the text becomes the tile grid the processor writes:
``<|image_start|>``, per row of tiles ``(<|patch|> * N <|tile_x_separator|>)...
<|tile_y_separator|>`` (multi-tile images only), then ``<|image|> <|patch|> * N
<|image_end|>``, ``N = (tile_size / patch_size) ** 2 * pixel_shuffle_ratio ** 2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tunesmith.data._image_transforms import (
    find_supported_resolutions,
    get_canvas_best_fit,
    load_image,
    resize_to_fit_canvas,
    tile_crop,
)
from tunesmith.models.llama4._tokenizer import Llama4Tokenizer

__all__ = ["Llama4ImageTransform", "Llama4Transform", "llama4_transform"]

LLAMA4_MEAN = (0.5, 0.5, 0.5)
LLAMA4_STD = (0.5, 0.5, 0.5)


class Llama4ImageTransform:
    """Image -> ``{"image": [T, C, tile, tile], "aspect_ratio": [2] (tiles h, w)}``; ``T`` =
    tiles, plus 1 (the thumbnail) when the grid has more than one tile.

    The steps of transformers' ``Llama4ImageProcessor``, bit for bit: the best canvas
    (:func:`~tunesmith.data._image_transforms.get_canvas_best_fit` over every grid of at most
    ``max_num_tiles`` tiles), antialiased bilinear resize of the uint8 image (torch's, which
    torchvision's ``resize`` runs) to fit it without upscaling past one tile per side, zero
    pad right / bottom, ``x * (1/255)`` then ``(x - mean) / std`` in ``dtype`` (bf16, as
    transformers and torchtune), tiles row-major; the thumbnail is the whole image resized to
    one tile the same way.
    """

    def __init__(
        self,
        tile_size: int = 336,
        max_num_tiles: int = 16,
        image_mean: Sequence[float] = LLAMA4_MEAN,
        image_std: Sequence[float] = LLAMA4_STD,
        dtype: torch.dtype = torch.bfloat16,
    ):
        self.tile_size, self.max_num_tiles, self.dtype = tile_size, max_num_tiles, dtype
        self.mean = torch.tensor(image_mean, dtype=dtype)[:, None, None]
        self.std = torch.tensor(image_std, dtype=dtype)[:, None, None]
        self.resolutions = find_supported_resolutions(max_num_tiles, tile_size)

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    def _normalize(self, x: Tensor) -> Tensor:
        return (x.to(self.dtype) * (1 / 255) - self.mean) / self.std

    def __call__(self, image: Any) -> dict[str, Tensor]:
        image = load_image(image)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())[None]
        h, w = x.shape[-2:]
        canvas = get_canvas_best_fit((h, w), self.resolutions)
        new_h, new_w = resize_to_fit_canvas((h, w), canvas, self.tile_size)
        padded = torch.zeros(3, *canvas, dtype=torch.uint8)
        padded[:, :new_h, :new_w] = self._resize(x, (new_h, new_w))[0]
        tiles = tile_crop(self._normalize(padded), self.tile_size)
        ratio = torch.tensor([canvas[0] // self.tile_size, canvas[1] // self.tile_size])
        if int(ratio.prod()) > 1:
            thumb = self._resize(x, (self.tile_size, self.tile_size))
            tiles = torch.cat([tiles, self._normalize(thumb)])
        return {"image": tiles, "aspect_ratio": ratio}


class Llama4Transform:
    """Sample ``{"messages": [...]}`` (image parts ``{"type": "image", "content": path |
    bytes | PIL}``) -> ``tokens``, ``mask`` and ``encoder_input = {"images": [[T, C, t, t],
    ...]}`` (one entry per image, in order). ``max_seq_len`` truncates after the tile grids
    are written; cutting into an image's tokens is an error."""

    def __init__(
        self,
        path: str,
        *,
        tile_size: int,
        patch_size: int,
        max_num_tiles: int = 16,
        pixel_shuffle_scaling_factor: float = 0.5,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        image_mean: Sequence[float] = LLAMA4_MEAN,
        image_std: Sequence[float] = LLAMA4_STD,
        dtype: torch.dtype = torch.bfloat16,
        prompt_template: Any = None,
    ):
        self.tokenizer = Llama4Tokenizer(
            path, special_tokens=special_tokens, prompt_template=prompt_template
        )
        specials = self.tokenizer.special_tokens
        for name in ("<|image|>", "<|patch|>", "<|image_start|>", "<|image_end|>"):
            if name not in specials:
                raise ValueError(f"the tokenizer's special tokens have no {name}")
        self.image_id, self.patch_id = specials["<|image|>"], specials["<|patch|>"]
        self._start, self._end = specials["<|image_start|>"], specials["<|image_end|>"]
        self._x_sep = specials.get("<|tile_x_separator|>")
        self._y_sep = specials.get("<|tile_y_separator|>")
        self.image_placeholder_text = "<|image|>"  # datasets refuse rows writing it as text
        self.image_transform = Llama4ImageTransform(tile_size, max_num_tiles, image_mean, image_std)
        self.patch_tokens_per_tile = int(
            (tile_size // patch_size) ** 2 * pixel_shuffle_scaling_factor**2
        )
        self.max_seq_len = max_seq_len
        self.max_num_tiles = max_num_tiles
        self.stop_tokens = self.tokenizer.stop_tokens
        self.pad_id = self.tokenizer.pad_id
        self.special_tokens = specials

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, token_ids: list[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def tokenize_messages(self, messages: list[Any], add_end_tokens: bool = True) -> Any:
        return self.tokenizer.tokenize_messages(messages, add_end_tokens=add_end_tokens)

    def tile_grid(self, aspect_ratio: Sequence[int]) -> list[int]:
        """Token ids of one image of ``aspect_ratio = (tiles high, tiles wide)``."""
        n = self.patch_tokens_per_tile
        h, w = (int(v) for v in aspect_ratio)
        ids = [self._start]
        if h * w > 1:
            if self._x_sep is None or self._y_sep is None:
                raise ValueError("multi-tile images need <|tile_x_separator|> / _y_ tokens")
            for _ in range(h):
                for x in range(w):
                    ids += [self.patch_id] * n + ([self._x_sep] if x < w - 1 else [])
                ids.append(self._y_sep)
        return ids + [self.image_id] + [self.patch_id] * n + [self._end]

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        images = [img for message in sample["messages"] for img in message.get_media()]
        outs = [self.image_transform(image) for image in images]
        sample = self.tokenizer(sample, inference=inference)
        n_tags = sum(tok == self.image_id for tok in sample["tokens"])
        if n_tags != len(outs):
            raise ValueError(
                f"the messages have {len(outs)} image parts but the text has {n_tags} "
                "<|image|> tokens; write images as content parts, not as text tags"
            )
        tokens: list[int] = []
        mask: list[bool] = []
        grids = iter(outs)
        for tok, m in zip(sample["tokens"], sample["mask"], strict=True):
            ids = self.tile_grid(next(grids)["aspect_ratio"]) if tok == self.image_id else [tok]
            tokens += ids
            mask += [m] * len(ids)
        if self.max_seq_len is not None and len(tokens) > self.max_seq_len:
            if self.patch_id in tokens[self.max_seq_len :]:
                raise ValueError(
                    f"a sample's image tokens pass max_seq_len={self.max_seq_len} "
                    f"({len(tokens)} tokens); raise max_seq_len or lower max_num_tiles"
                )
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        sample["tokens"], sample["mask"] = tokens, mask
        sample["encoder_input"] = {"images": [o["image"] for o in outs]}
        return sample

    def collate(
        self,
        batch: Sequence[Mapping[str, Any]],
        padding_idx: int | None = None,
        ignore_idx: int = -100,
    ) -> dict[str, Any]:
        """``padded_collate_sft``'s ``tokens, labels [b, s]`` (right padded) plus
        ``encoder_input = {"images": [n, C, t, t]}``: every tile of every image, in order
        (the model writes their features over the ``<|patch|>`` tokens in that order)."""
        from tunesmith.data import padded_collate_sft

        pad = self.pad_id if padding_idx is None else padding_idx
        text = [{k: s[k] for k in ("tokens", "labels")} for s in batch]
        out: dict[str, Any] = dict(padded_collate_sft(text, padding_idx=pad, ignore_idx=ignore_idx))
        tiles = [t for s in batch for t in s.get("encoder_input", {}).get("images", [])]
        if tiles:
            out["encoder_input"] = {"images": torch.cat(tiles)}
        return out


def llama4_transform(
    path: str,
    max_seq_len: int | None = 8192,
    image_size: int = 336,
    max_num_tiles: int = 16,
    special_tokens_path: str | None = None,
    prompt_template: Any = None,
) -> Llama4Transform:
    """torchtune's builder: 14 px patches, pixel shuffle 0.5, mean = std = 0.5.

    Args:
        path: the tiktoken ``tokenizer.model``.
        max_seq_len: truncate samples to this many tokens (None: no limit).
        image_size: tile side in pixels (the model's ``image_size``).
        max_num_tiles: most tiles per image (without the thumbnail).
        special_tokens_path: an HF ``tokenizer.json`` (or ``{token: id}`` JSON) whose tokens
            replace the default Llama 4 special tokens.
        prompt_template: dotted path, ``{role: [prepend, append]}`` or a template object.
    """
    from tunesmith.data.tokenizers import load_special_tokens

    special = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Llama4Transform(
        path,
        tile_size=image_size,
        patch_size=14,
        max_num_tiles=max_num_tiles,
        special_tokens=special,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
    )
