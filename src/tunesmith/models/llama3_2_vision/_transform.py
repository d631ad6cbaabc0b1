"""``llama3_2_vision_transform``: tokenizer + tiled image transform + cross-attention mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.data._image_transforms import CLIP_MEAN, CLIP_STD, TiledImageTransform
from tunesmith.data._vision_collate import VisionCrossAttentionMask
from tunesmith.models.llama3._tokenizer import llama3_tokenizer

__all__ = ["Llama3VisionTransform", "llama3_2_vision_transform"]


class Llama3VisionTransform:
    """Sample ``{"messages": [...]}`` (image parts ``{"type": "image", "content": path |
    bytes | PIL}``) -> ``tokens``, ``mask``, ``encoder_input = {"images": [[T, C, H, W], ...],
    "aspect_ratio": [[2], ...]}`` and ``encoder_mask`` (one ``[s, T * L]`` per image).

    Images are loaded here, one sample at a time (never all in memory). Each image part
    becomes one ``<|image|>`` token (as ``MllamaProcessor`` does).
    """

    def __init__(
        self,
        path: str,
        *,
        tile_size: int,
        patch_size: int,
        max_num_tiles: int = 4,
        special_tokens_path: str | None = None,
        max_seq_len: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        prompt_template: Any = None,
    ):
        self.tokenizer = llama3_tokenizer(
            path,
            special_tokens_path=special_tokens_path,
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
        )
        if self.tokenizer.image_id is None:
            raise ValueError("the tokenizer's special tokens have no <|image|>")
        self.image_transform = TiledImageTransform(tile_size, max_num_tiles, image_mean, image_std)
        self.xattn_mask = VisionCrossAttentionMask(
            tile_size, patch_size, self.tokenizer.image_id, max_num_tiles
        )
        self.stop_tokens = self.tokenizer.stop_tokens
        self.max_seq_len = max_seq_len
        self.image_seq_len = max_num_tiles * self.xattn_mask.tokens_per_tile
        self.pad_id = self.tokenizer.pad_id

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, token_ids: list[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def tokenize_messages(self, messages: list[Any], add_end_tokens: bool = True) -> Any:
        return self.tokenizer.tokenize_messages(messages, add_end_tokens=add_end_tokens)

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        images = [img for message in sample["messages"] for img in message.get_media()]
        encoder_input: dict[str, list] = {"images": [], "aspect_ratio": []}
        for image in images:
            out = self.image_transform(image)
            encoder_input["images"].append(out["image"])
            encoder_input["aspect_ratio"].append(out["aspect_ratio"])
        sample = self.tokenizer(sample, inference=inference)
        sample["encoder_input"] = encoder_input
        return self.xattn_mask(sample, inference=inference)


def llama3_2_vision_transform(
    path: str,
    max_seq_len: int = 8192,
    image_size: int = 560,
    special_tokens_path: str | None = None,
    prompt_template: Any = None,
) -> Llama3VisionTransform:
    """torchtune's builder: 14 px patches, at most 4 tiles of ``image_size``, CLIP's mean/std."""
    return Llama3VisionTransform(
        path=path,
        special_tokens_path=special_tokens_path,
        tile_size=image_size,
        patch_size=14,
        max_num_tiles=4,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
    )
