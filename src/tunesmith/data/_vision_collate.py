"""Cross-attention masks for image tokens, the tiled-image collate (torchtune's names) and
the collate for variable patch counts (Qwen2.5-VL).

Which text tokens see which image (Meta's / transformers' rule): an image is seen from its
``<|image|>`` token up to the next image token; consecutive image tokens form a group that
is seen up to the end of the next group's start (or the sequence end).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.data._collate import padded_collate_sft

__all__ = [
    "VisionCrossAttentionMask",
    "image_attention_intervals",
    "image_collate",
    "padded_collate_image_patches",
    "padded_collate_packed_tiled_images_and_mask",
    "padded_collate_tiled_images_and_mask",
    "padded_collate_vision_dpo",
]


def image_attention_intervals(tokens: Sequence[int], image_token_id: int) -> list[list[int]]:
    """``[start, end)`` token ranges that see each image, one per image token, in order."""
    locations = [i for i, t in enumerate(tokens) if t == image_token_id]
    if not locations:
        return []
    intervals = [[a, b] for a, b in zip(locations[:-1], locations[1:])]
    intervals.append([locations[-1], len(tokens)])
    end = intervals[-1][1]
    for interval in reversed(intervals):  # consecutive image tokens share the group's end
        if interval[0] == interval[1] - 1:
            interval[1] = end
        end = interval[1]
    return intervals


class VisionCrossAttentionMask:
    """Adds ``encoder_mask``: one ``[s, T_i * L]`` bool mask per image of a sample.

    Args:
        tile_size, patch_size: give ``L = (tile_size / patch_size) ** 2 + 1`` tokens per tile.
        image_token_id: the ``<|image|>`` id.
        max_num_tiles: unused beyond torchtune's signature (tiles come from each image).

    ``__call__(sample)`` reads ``sample["tokens"]`` and ``sample["encoder_input"]["images"]``
    (a list of ``[T_i, C, H, W]``) and raises ``ValueError`` when the image token count
    differs from the number of images.
    """

    def __init__(
        self,
        tile_size: int,
        patch_size: int,
        image_token_id: int,
        max_num_tiles: int | None = None,
    ):
        self.tokens_per_tile = (tile_size // patch_size) ** 2 + 1
        self.image_token_id = image_token_id
        self.max_num_tiles = max_num_tiles

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        tokens = sample["tokens"]
        images = sample.get("encoder_input", {}).get("images", [])
        intervals = image_attention_intervals(tokens, self.image_token_id)
        if len(intervals) != len(images):
            raise ValueError(
                f"the text has {len(intervals)} <|image|> tokens but the sample has "
                f"{len(images)} images; put one image tag per image"
            )
        masks = []
        for (start, end), image in zip(intervals, images):
            mask = torch.zeros(len(tokens), image.shape[0] * self.tokens_per_tile, dtype=torch.bool)
            mask[start:end] = True
            masks.append(mask)
        sample["encoder_mask"] = masks
        return sample


def padded_collate_tiled_images_and_mask(
    batch: Sequence[Mapping[str, Any]],
    padding_idx: int = 0,
    ignore_idx: int = -100,
    pad_direction: str = "right",
    pad_max_tiles: int | None = None,
    pad_max_images: int | None = None,
) -> dict[str, Any]:
    """Pad tokens / labels, images, aspect ratios and cross-attention masks of a batch.

    Each sample: ``tokens [s_i]``, ``labels [s_i]``, ``encoder_input = {"images": [T, C, H,
    W] per image, "aspect_ratio": [2] per image}``, ``encoder_mask``: ``[s_i, T * L]`` per
    image. Returns ``tokens, labels [b, s]``, ``encoder_input = {"images" [b, I, T, C, H, W]
    (zeros for padding tiles / images), "aspect_ratio" [b, I, 2] ((0, 0) for padding images),
    "aspect_ratio_mask" [b, I, T] (tile 0 of padding images set, as transformers does)}``,
    ``encoder_mask [b, s, I * T * L]`` bool. Right padding only.
    """
    if pad_direction != "right":
        raise ValueError("padded_collate_tiled_images_and_mask supports pad_direction='right'")
    text = padded_collate_sft(batch, padding_idx=padding_idx, ignore_idx=ignore_idx)
    text.update(
        _collate_tiled_images(batch, text["tokens"].shape[1], pad_max_tiles, pad_max_images)
    )
    return text


def padded_collate_packed_tiled_images_and_mask(
    batch: Sequence[Mapping[str, Any]], mask: bool = True
) -> dict[str, Any]:
    """Stack packs of image + text documents (``PackedMultimodalDataset`` items).

    Returns ``padded_collate_packed``'s ``tokens, labels, input_pos [b, s]`` and block-causal
    ``mask [b, s, s]``, and, when any pack has images, the images as
    ``padded_collate_tiled_images_and_mask`` pads them (``encoder_input`` with
    ``padded_tiles [b, I]`` added: tiles beyond it are absent while encoding that image),
    ``encoder_mask`` and ``encoder_fallback_mask`` ``[b, s, I * T * L]`` bool.
    """
    from tunesmith.data._collate import padded_collate_packed

    text = padded_collate_packed(batch, mask=mask)
    text.update(_collate_tiled_images(batch, text["tokens"].shape[1]))
    return text


def _collate_tiled_images(
    batch: Sequence[Mapping[str, Any]],
    s: int,
    pad_max_tiles: int | None = None,
    pad_max_images: int | None = None,
) -> dict[str, Any]:
    """The image part of the tiled collates: ``encoder_input`` and the per-image masks
    (``encoder_mask``, and ``encoder_fallback_mask`` where the samples have it) padded to
    ``[b, s, I * T * L]``; empty when no sample has an image."""
    b = len(batch)
    images = [list(sample.get("encoder_input", {}).get("images", [])) for sample in batch]
    ratios = [list(sample.get("encoder_input", {}).get("aspect_ratio", [])) for sample in batch]
    padded = [list(sample.get("encoder_input", {}).get("padded_tiles", [])) for sample in batch]
    keys = ("encoder_mask", "encoder_fallback_mask")
    mask_keys = [k for k in keys if any(k in sample for sample in batch)]
    masks = {k: [list(sample.get(k, [])) for sample in batch] for k in mask_keys}
    n_img = max([len(x) for x in images] + [pad_max_images or 0])
    all_images = [img for row in images for img in row]
    if not all_images:
        return {}
    n_tiles = max([img.shape[0] for img in all_images] + [pad_max_tiles or 0])
    c, h, w = all_images[0].shape[1:]
    first = next((row, k) for row, imgs in enumerate(images) for k in range(len(imgs)))
    seen = masks.get("encoder_mask")
    tokens_per_tile = None
    if seen is not None and len(seen[first[0]]) > first[1]:
        row, k = first
        tokens_per_tile = seen[row][k].shape[1] // images[row][k].shape[0]
    out_images = torch.zeros(b, n_img, n_tiles, c, h, w, dtype=all_images[0].dtype)
    out_ratio = torch.zeros(b, n_img, 2, dtype=torch.long)
    out_tile_mask = torch.zeros(b, n_img, n_tiles, dtype=torch.bool)
    out_tile_mask[:, :, 0] = True
    out_padded = torch.full((b, n_img), n_tiles, dtype=torch.long)
    enc: dict[str, torch.Tensor] = {}
    if tokens_per_tile is not None:
        enc = {
            k: torch.zeros(b, s, n_img, n_tiles * tokens_per_tile, dtype=torch.bool) for k in masks
        }
    for row in range(b):
        for k, img in enumerate(images[row]):
            t = img.shape[0]
            out_images[row, k, :t] = img
            out_ratio[row, k] = torch.as_tensor(ratios[row][k])
            out_tile_mask[row, k, :t] = True
            if padded[row]:
                out_padded[row, k] = int(padded[row][k])
            for key, out in enc.items():
                m = masks[key][row][k]
                out[row, : m.shape[0], k] = F.pad(m, (0, out.shape[-1] - m.shape[1]))
    encoder_input = {
        "images": out_images,
        "aspect_ratio": out_ratio,
        "aspect_ratio_mask": out_tile_mask,
    }
    if any(padded):
        encoder_input["padded_tiles"] = out_padded
    result: dict[str, Any] = {"encoder_input": encoder_input}
    result.update({k: v.reshape(b, s, -1) for k, v in enc.items()})
    return result


def padded_collate_image_patches(
    batch: Sequence[Mapping[str, Any]],
    padding_idx: int = 0,
    ignore_idx: int = -100,
    pad_direction: str = "right",
) -> dict[str, Any]:
    """Pad tokens / labels and concatenate every image's patches (variable counts).

    Each sample: ``tokens [s_i]``, ``labels [s_i]``, ``encoder_input = {"pixel_values":
    [N_k, P] per image, "grid_thw": [3] per image}``. Returns ``tokens, labels [b, s]``
    (right padded) and, when any sample has images, ``encoder_input = {"pixel_values"
    [sum N_k, P], "image_grid_thw" [n, 3]}`` with images in batch order (as the model
    consumes the placeholder tokens row by row).
    """
    if pad_direction != "right":
        raise ValueError("padded_collate_image_patches supports pad_direction='right'")
    text = padded_collate_sft(batch, padding_idx=padding_idx, ignore_idx=ignore_idx)
    pixels, grids = [], []
    for sample in batch:
        enc = sample.get("encoder_input", {})
        pixels += list(enc.get("pixel_values", []))
        grids += [torch.as_tensor(g, dtype=torch.long) for g in enc.get("grid_thw", [])]
    if len(pixels) != len(grids):
        raise ValueError(f"{len(pixels)} images but {len(grids)} grid_thw entries")
    if pixels:
        text["encoder_input"] = {
            "pixel_values": torch.cat(pixels),
            "image_grid_thw": torch.stack(grids),
        }
    return text


def padded_collate_vision_dpo(
    batch: Sequence[Mapping[str, Any]],
    collate: Any = padded_collate_tiled_images_and_mask,
    padding_idx: int = 0,
    ignore_idx: int = -100,
) -> dict[str, Any]:
    """Image + text preference pairs (``MultimodalPreferenceDataset`` items: ids and labels per
    side, each side's ``{"encoder_input", "encoder_mask"}`` in ``chosen_vision`` /
    ``rejected_vision``) -> ``collate`` of ``2b`` rows: rows ``:b`` chosen, ``b:`` rejected.

    ``collate`` is the model's image collate (``padded_collate_tiled_images_and_mask``, or the
    model transform's own ``collate``), so the pair batch is the finetune batch of the same
    rows: ``tokens, labels [2b, s]``, ``encoder_input``, and ``encoder_mask [2b, s, I * T *
    L]`` (Llama 3.2 Vision) or ``input_pos [3, 2b, s]`` (Qwen-VL).
    """
    rows = [
        {"tokens": x[f"{side}_input_ids"], "labels": x[f"{side}_labels"], **x[f"{side}_vision"]}
        for side in ("chosen", "rejected")
        for x in batch
    ]
    return collate(rows, padding_idx=padding_idx, ignore_idx=ignore_idx)


def image_collate(tokenizer: Any) -> Any:
    """The collate of image + text rows for ``tokenizer`` (the model transform): its own
    ``collate`` where it has one (Qwen-VL: variable patch counts + M-RoPE ids), else
    ``padded_collate_tiled_images_and_mask`` with tiles padded to the transform's max (Llama
    3.2 Vision, as transformers' processor and generate/eval do: the ViT lets real patches
    attend to padding tiles). Called as ``collate(rows, padding_idx=, ignore_idx=)``."""
    own = getattr(tokenizer, "collate", None)
    if own is not None:
        return own
    max_tiles = getattr(getattr(tokenizer, "image_transform", None), "max_num_tiles", None)
    return partial(padded_collate_tiled_images_and_mask, pad_max_tiles=max_tiles)
