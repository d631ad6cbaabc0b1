"""CLIP (https://arxiv.org/abs/2103.00020) with torchtune's API: the text encoder and its
tokenizer, the tiled image transform, and torchtune's tiled vision encoder with its tile /
token position embeddings in torchtune's grid layout (interpolated on load)."""

from tunesmith.models.clip._component_builders import (
    clip_mlp,
    clip_text_encoder,
    clip_vision_encoder,
)
from tunesmith.models.clip._convert_weights import clip_text_hf_to_tune
from tunesmith.models.clip._model_builders import (
    clip_text_vit_large_patch14,
    clip_tokenizer,
    clip_vit_224_transform,
)
from tunesmith.models.clip._position_embeddings import (
    TiledTokenPositionalEmbedding,
    TilePositionalEmbedding,
    TokenPositionalEmbedding,
)
from tunesmith.models.clip._text_encoder import CLIPTextEncoder, QuickGELU
from tunesmith.models.clip._tokenizer import CLIPTokenizer
from tunesmith.models.clip._transform import CLIPImageTransform
from tunesmith.models.clip._vision_encoder import (
    CLIPVisionTransformer,
    CLSProjection,
    TiledCLSEmbedding,
)

__all__ = [
    "CLIPImageTransform",
    "CLIPTextEncoder",
    "CLIPTokenizer",
    "CLIPVisionTransformer",
    "CLSProjection",
    "QuickGELU",
    "TiledCLSEmbedding",
    "TiledTokenPositionalEmbedding",
    "TilePositionalEmbedding",
    "TokenPositionalEmbedding",
    "clip_mlp",
    "clip_text_encoder",
    "clip_text_hf_to_tune",
    "clip_text_vit_large_patch14",
    "clip_tokenizer",
    "clip_vision_encoder",
    "clip_vit_224_transform",
]
