"""``qwen2_5_vl_transform``: Qwen2.5 tokenizer + dynamic-resolution image transform.

Prompt format (the official Qwen2.5-VL chat template): ChatML, default system prompt
``"You are a helpful assistant."``, each image part rendered as
``<|vision_start|><|image_pad|><|vision_end|>`` and its ``<|image_pad|>`` expanded to the
image's token count (``grid_h * grid_w / merge_size ** 2``), as ``Qwen2_5_VLProcessor`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tunesmith.data._image_transforms import CLIP_MEAN, CLIP_STD, DynamicResolutionImageTransform
from tunesmith.data.tokenizers import ChatMLFormat
from tunesmith.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS, Qwen2_5Tokenizer

__all__ = ["Qwen2_5_VLTransform", "qwen2_5_vl_transform"]

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VL_SYSTEM_PROMPT = "You are a helpful assistant."


class Qwen2_5_VLTransform:  # noqa: N801 - the model's name
    """Sample ``{"messages": [...]}`` (image parts ``{"type": "image", "content": path |
    bytes | PIL}``) -> ``tokens [s]``, ``mask [s]`` and ``encoder_input = {"pixel_values":
    [N_k, C * tp * p * p] per image, "grid_thw": [3] per image}``.

    Images are loaded here, one sample at a time. ``max_seq_len`` truncates after the image
    tokens are expanded; cutting into an image's tokens is an error (raise the limit or use
    smaller ``max_pixels``).
    """

    def __init__(
        self,
        path: str,
        merges_file: str,
        *,
        max_seq_len: int | None = None,
        patch_size: int = 14,
        merge_size: int = 2,
        temporal_patch_size: int = 2,
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        special_tokens: dict[str, int] | None = None,
        prompt_template: Any = None,
        default_system_prompt: str | None = VL_SYSTEM_PROMPT,
    ):
        self.tokenizer = Qwen2_5Tokenizer(
            path,
            merges_file,
            special_tokens if special_tokens is not None else QWEN2_5_SPECIAL_TOKENS,
            None,
            prompt_template=prompt_template,
            default_system_prompt=default_system_prompt,
            chat_format=ChatMLFormat(
                default_system_prompt, image_token=IMAGE_PLACEHOLDER, family="Qwen2.5-VL"
            ),
        )
        specials = self.tokenizer.special_tokens
        self.image_token_id = specials["<|image_pad|>"]
        # datasets refuse rows whose text writes it (images come as content parts)
        self.image_placeholder_text = "<|image_pad|>"
        self.image_transform = DynamicResolutionImageTransform(
            patch_size,
            merge_size,
            temporal_patch_size,
            min_pixels,
            max_pixels,
            image_mean,
            image_std,
        )
        self.merge_size = merge_size
        self.max_seq_len = max_seq_len
        self.stop_tokens = self.tokenizer.stop_tokens
        self.pad_id = self.tokenizer.pad_id

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, token_ids: list[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        images = [img for message in sample["messages"] for img in message.get_media()]
        outs = [self.image_transform(image) for image in images]
        sample = self.tokenizer(sample, inference=inference)
        counts = [int(o["grid_thw"].prod()) // self.merge_size**2 for o in outs]
        n_tags = sum(tok == self.image_token_id for tok in sample["tokens"])
        if n_tags != len(counts):
            raise ValueError(
                f"the messages have {len(counts)} image parts but the text has {n_tags} "
                "<|image_pad|> tokens; write images as content parts, not as text tags"
            )
        tokens, mask, k = [], [], 0
        for tok, m in zip(sample["tokens"], sample["mask"], strict=True):
            n = 1
            if tok == self.image_token_id:
                n, k = counts[k], k + 1
            tokens += [tok] * n
            mask += [m] * n
        if self.max_seq_len is not None and len(tokens) > self.max_seq_len:
            if self.image_token_id in tokens[self.max_seq_len :]:
                raise ValueError(
                    f"a sample's image tokens pass max_seq_len={self.max_seq_len} "
                    f"({len(tokens)} tokens); raise max_seq_len or lower max_pixels"
                )
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        sample["tokens"], sample["mask"] = tokens, mask
        sample["encoder_input"] = {
            "pixel_values": [o["pixel_values"] for o in outs],
            "grid_thw": [o["grid_thw"] for o in outs],
        }
        return sample

    def collate(
        self,
        batch: Sequence[Mapping[str, Any]],
        padding_idx: int | None = None,
        ignore_idx: int = -100,
    ) -> dict[str, Any]:
        """This model's batches (the finetune recipe and ``generate`` take the collate from
        the transform): :func:`~tunesmith.data.padded_collate_image_patches` (``tokens,
        labels [b, s]`` right padded, ``encoder_input = {"pixel_values" [sum N_k, C*tp*p*p],
        "image_grid_thw" [n, 3]}``) plus ``input_pos [3, b, s]``, each row's M-RoPE ids
        (:func:`~tunesmith.modules.qwen_vision.mrope_positions`; padding gets 0), computed
        here on the host once per batch instead of in the model's forward."""
        from tunesmith.data._vision_collate import padded_collate_image_patches
        from tunesmith.modules.qwen_vision import mrope_positions

        pad = self.pad_id if padding_idx is None else padding_idx
        out = padded_collate_image_patches(batch, padding_idx=pad, ignore_idx=ignore_idx)
        s = out["tokens"].shape[1]
        lengths = torch.tensor([len(sample["tokens"]) for sample in batch])
        real = torch.arange(s)[None] < lengths[:, None]
        grid = out.get("encoder_input", {}).get("image_grid_thw")
        out["input_pos"] = mrope_positions(
            out["tokens"], grid, self.image_token_id, self.merge_size, real
        )
        return out

    def collate_packed(
        self, batch: Sequence[Mapping[str, Any]], mask: bool = True
    ) -> dict[str, Any]:
        """Packs of this model's documents (``PackedMultimodalDataset`` items):
        ``padded_collate_packed``'s ``tokens, labels [b, s]`` and block-causal ``mask [b, s,
        s]``, ``encoder_input`` as :meth:`collate` makes it (every pack's images in batch
        order) and ``input_pos [3, b, s]``: each document's own M-RoPE ids (restarting at 0
        per document, as when it runs alone); the pack's padding tail counts on as text."""
        from tunesmith.data import padded_collate_packed
        from tunesmith.modules.qwen_vision import mrope_positions

        out = padded_collate_packed(batch, mask=mask)
        tokens = out["tokens"]
        pixels: list[torch.Tensor] = []
        grids: list[torch.Tensor] = []
        for sample in batch:
            enc = sample.get("encoder_input", {})
            pixels += list(enc.get("pixel_values", []))
            grids += [torch.as_tensor(g, dtype=torch.long) for g in enc.get("grid_thw", [])]
        if pixels:
            out["encoder_input"] = {
                "pixel_values": torch.cat(pixels),
                "image_grid_thw": torch.stack(grids),
            }
        per_image = [int(g.prod()) // self.merge_size**2 for g in grids]
        positions = torch.zeros(3, *tokens.shape, dtype=torch.long)
        k = 0
        for row, sample in enumerate(batch):
            start = 0
            for n in torch.as_tensor(sample["seq_lens"]).tolist():
                doc = tokens[row : row + 1, start : start + n]
                placeholders, first = int((doc == self.image_token_id).sum()), k
                while placeholders > 0:
                    placeholders, k = placeholders - per_image[k], k + 1
                grid = torch.stack(grids[first:k]) if k > first else None
                positions[:, row : row + 1, start : start + n] = mrope_positions(
                    doc, grid, self.image_token_id, self.merge_size
                )
                start += n
        out["input_pos"] = positions
        return out


def qwen2_5_vl_transform(
    path: str,
    merges_file: str,
    max_seq_len: int | None = None,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    special_tokens_path: str | None = None,
    prompt_template: Any = None,
) -> Qwen2_5_VLTransform:
    """Qwen2.5-VL's transform (14 px patches, 2 x 2 merge, CLIP mean/std, ChatML)."""
    from tunesmith.data.tokenizers import load_special_tokens

    special = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Qwen2_5_VLTransform(
        path,
        merges_file,
        max_seq_len=max_seq_len,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        special_tokens=special,
        prompt_template=prompt_template,
    )
