"""``PackedMultimodalDataset``: image + text samples packed into fixed-length sequences.

torchtune refused ``packed=True`` for its multimodal datasets. Here a pack holds whole
documents (in order, next-fit, as the text packer does) and every image of those documents:

- self-attention is block-causal per document and positions restart per document (the text
  packer's ``input_pos`` / ``document_ids``, batched by ``padded_collate_packed``);
- a token sees the images of its own document only, by the rule of an unpacked sample
  (``encoder_mask``: each image from its ``<|image|>`` token to the next image group or the
  document's end);
- a token that sees no image attends what it would attend if its document ran alone
  (``encoder_fallback_mask``): every tile of its own document's images, as transformers does
  for such rows; in a document without images, nothing (its cross-attention layers are the
  identity, as when a text-only sample skips fusion);
- every image is encoded as padded to its own document's tile count (``padded_tiles``), since
  Llama 3.2 Vision's encoder lets real tokens attend padding tiles.

So each document's logits, and the summed token loss of a pack, equal those of the
documents run one at a time (``tests/datasets/test_multimodal_packing.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.datasets._packed import PackedDataset

__all__ = ["PackedMultimodalDataset", "maybe_pack_multimodal"]


class PackedMultimodalDataset(PackedDataset):
    """Pack a multimodal dataset (items ``tokens``, ``labels``, ``encoder_input = {"images":
    [T_i, C, H, W] per image, "aspect_ratio": [2] per image}``, ``encoder_mask``: ``[s_d,
    T_i * L]`` per image, as ``MultimodalSFTDataset`` with a tiled image transform gives).

    Building it reads every item once (images are opened and dropped one sample at a time)
    to learn the token counts; an item is read again, images and all, when its pack is. A
    sample longer than ``max_seq_len`` is an error naming it (as the text packer without
    ``split_across_pack``; samples are not cut, which would split an image from its text).

    Each item: the text pack (``tokens``, ``labels``, ``input_pos``, ``document_ids``,
    ``seq_lens``; see :class:`PackedDataset`) and ``encoder_input = {"images": [T_i, C, H,
    W], "aspect_ratio": [2], "padded_tiles": int}`` per image of the pack in order,
    ``encoder_mask`` and ``encoder_fallback_mask``: one ``[max_seq_len, T * L]`` bool per
    image (see the module docstring). Batch with
    ``padded_collate_packed_tiled_images_and_mask``.
    """

    multimodal = True

    def __init__(
        self,
        ds: Any,
        *,
        max_seq_len: int,
        padding_idx: int = 0,
        max_packs: int | None = None,
    ):
        super().__init__(ds, max_seq_len=max_seq_len, padding_idx=padding_idx, max_packs=max_packs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        out: dict[str, Any] = self.packs.pack_tensors(index)
        first, last = (int(x) for x in self.packs.pack_doc_offsets[index : index + 2])
        samples, start = [], 0
        for doc in range(first, last):
            sample_index = int(self.sample_indices[doc])
            sample = self.ds[sample_index]
            n = int(self.packs.doc_lens[doc])
            if len(sample["tokens"]) != n:
                raise ValueError(
                    f"sample {sample_index} has {len(sample['tokens'])} tokens now but had {n} "
                    "when packed; packing needs a deterministic model transform"
                )
            samples.append((sample_index, sample, start, n))
            start += n
        patches = any("pixel_values" in s.get("encoder_input", {}) for _, s, _, _ in samples)
        out.update(self._patches(samples) if patches else self._tiles(samples))
        return out

    def _patches(self, samples: list[tuple[int, dict[str, Any], int, int]]) -> dict[str, Any]:
        """Variable patch counts (Qwen2.5-VL): every image's patches and grid, in order."""
        pixels: list[torch.Tensor] = []
        grids: list[Any] = []
        for _, sample, _, _ in samples:
            enc = sample.get("encoder_input", {})
            pixels += list(enc.get("pixel_values", []))
            grids += list(enc.get("grid_thw", []))
        return {"encoder_input": {"pixel_values": pixels, "grid_thw": grids}}

    def _tiles(self, samples: list[tuple[int, dict[str, Any], int, int]]) -> dict[str, Any]:
        """Tiled images (Llama 3.2 Vision) with their per-document cross-attention masks."""
        size = self.max_seq_len
        images: list[torch.Tensor] = []
        ratios: list[Any] = []
        padded: list[int] = []
        seen: list[torch.Tensor] = []
        fallback: list[torch.Tensor] = []
        for sample_index, sample, start, n in samples:
            doc_images = list(sample.get("encoder_input", {}).get("images", []))
            masks = list(sample.get("encoder_mask", []))
            if len(masks) != len(doc_images):
                raise ValueError(
                    f"sample {sample_index}: {len(doc_images)} images but {len(masks)} "
                    "encoder_mask entries; packing needs a tiled image transform with a "
                    "cross-attention mask (Llama 3.2 Vision's) or image patches (Qwen2.5-VL's)"
                )
            if doc_images:
                tiles = max(int(img.shape[0]) for img in doc_images)
                per_tile = int(masks[0].shape[1]) // int(doc_images[0].shape[0])
            for img, ratio, mask in zip(doc_images, sample["encoder_input"]["aspect_ratio"], masks):
                row_seen = torch.zeros(size, mask.shape[1], dtype=torch.bool)
                row_seen[start : start + n] = mask
                row_fallback = torch.zeros(size, tiles * per_tile, dtype=torch.bool)
                row_fallback[start : start + n] = True
                images.append(img)
                ratios.append(ratio)
                padded.append(tiles)
                seen.append(row_seen)
                fallback.append(row_fallback)
        return {
            "encoder_input": {"images": images, "aspect_ratio": ratios, "padded_tiles": padded},
            "encoder_mask": seen,
            "encoder_fallback_mask": fallback,
        }


def maybe_pack_multimodal(ds: Any, model_transform: Any, packed: bool) -> Any:
    """``ds`` itself, or a :class:`PackedMultimodalDataset` of it with the transform's
    ``max_seq_len`` as the pack length (an error naming ``tokenizer.max_seq_len`` when it is
    unset)."""
    if not packed:
        return ds
    own = getattr(model_transform, "collate", None) is not None
    if own and getattr(model_transform, "collate_packed", None) is None:
        from tunesmith.config import ConfigError

        raise ConfigError(
            f"dataset.packed=True: {type(model_transform).__name__} collates its own batches "
            "but has no collate_packed, so its samples cannot be packed: set "
            "dataset.packed: False",
            key="dataset.packed",
        )
    from tunesmith.datasets._common import pack_length

    max_seq_len, pad_id = pack_length(model_transform)
    return PackedMultimodalDataset(ds, max_seq_len=max_seq_len, padding_idx=pad_id)
