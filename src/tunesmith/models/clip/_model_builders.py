"""CLIP model builders with torchtune's names: the tokenizer, ViT-L/14's text encoder and
the 224-pixel single-tile image transform."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data._image_transforms import CLIP_MEAN, CLIP_STD
from tunesmith.models.clip._component_builders import clip_text_encoder
from tunesmith.models.clip._text_encoder import CLIPTextEncoder
from tunesmith.models.clip._tokenizer import CLIPTokenizer
from tunesmith.models.clip._transform import CLIPImageTransform

__all__ = ["clip_text_vit_large_patch14", "clip_tokenizer", "clip_vit_224_transform"]


def clip_tokenizer(path: str | Path, max_seq_len: int = 77, truncate: bool = True) -> CLIPTokenizer:
    """CLIP's tokenizer from its merges file (see :class:`CLIPTokenizer`)."""
    return CLIPTokenizer(path, max_seq_len=max_seq_len, truncate=truncate)


def clip_text_vit_large_patch14() -> CLIPTextEncoder:
    """The text encoder of CLIP ViT-L/14 (768 wide, 12 layers, 12 heads, 77 tokens)."""
    return clip_text_encoder(
        embed_dim=768, num_heads=12, num_layers=12, vocab_size=49408, max_seq_len=77, norm_eps=1e-5
    )


def clip_vit_224_transform() -> CLIPImageTransform:
    """One 224-pixel tile, CLIP's normalisation, upscaled to fill it."""
    return CLIPImageTransform(
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        tile_size=224,
        possible_resolutions=None,
        max_num_tiles=1,
        resample="bilinear",
        resize_to_max_canvas=True,
    )
