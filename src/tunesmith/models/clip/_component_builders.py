"""CLIP component builders with torchtune's signatures: the tiled vision encoder (torchtune's
layout, :class:`CLIPVisionTransformer`), the text encoder and the CLIP MLP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from tunesmith.models.clip._position_embeddings import (
    TiledTokenPositionalEmbedding,
    TilePositionalEmbedding,
    TokenPositionalEmbedding,
)
from tunesmith.models.clip._text_encoder import CLIPTextEncoder, QuickGELU
from tunesmith.models.clip._vision_encoder import CLIPVisionTransformer, CLSProjection
from tunesmith.modules.attention import MultiHeadAttention
from tunesmith.modules.feed_forward import FeedForward
from tunesmith.modules.low_precision import FrozenNF4Linear
from tunesmith.modules.norms import Fp32LayerNorm
from tunesmith.modules.position_embeddings import VisionRotaryPositionalEmbeddings
from tunesmith.modules.transformer import TransformerSelfAttentionLayer

__all__ = ["clip_mlp", "clip_text_encoder", "clip_vision_encoder"]


def clip_vision_encoder(
    tile_size: int,
    patch_size: int,
    embed_dim: int,
    num_layers: int,
    num_heads: int,
    activation: Callable[[], nn.Module] = nn.SiLU,
    cls_output_dim: int = 512,
    attn_bias: bool = True,
    use_rope: bool = False,
    out_indices: list[int] | None = None,
    output_cls_projection: bool = False,
    max_num_tiles: int = 4,
    in_channels: int = 3,
    append_cls_token: bool = False,
    use_tile_pos_embed: bool = True,
) -> CLIPVisionTransformer:
    """torchtune's tiled CLIP vision encoder: ``num_layers`` full-attention layers
    (``num_heads`` heads, a ``4 * embed_dim`` MLP of ``activation()``, Fp32 LayerNorms),
    tile and tiled-token position embeddings when ``max_num_tiles > 1`` and
    ``use_tile_pos_embed`` (else one token embedding), optional 2-D RoPE, the class token
    first (last with ``append_cls_token``) and, with ``output_cls_projection``, only each
    tile's class token projected to ``cls_output_dim``. ``out_indices``: layers whose inputs
    are returned as hidden states.

    Raises:
        ValueError: ``embed_dim`` is not a multiple of ``num_heads``.
    """
    if embed_dim % num_heads:
        raise ValueError(
            f"embed_dim must be divisible by num_heads, got {embed_dim} and {num_heads}"
        )
    head_dim = embed_dim // num_heads
    cls_projection = CLSProjection(embed_dim, cls_output_dim) if output_cls_projection else None
    rope = (
        VisionRotaryPositionalEmbeddings(
            patch_size=patch_size,
            tile_size=tile_size,
            max_num_tiles=max_num_tiles,
            dim=head_dim // 2,
            base=10_000,
            append_cls_token=append_cls_token,
        )
        if use_rope
        else None
    )
    attn = MultiHeadAttention(
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=head_dim,
        q_proj=nn.Linear(embed_dim, embed_dim, bias=attn_bias),
        k_proj=nn.Linear(embed_dim, embed_dim, bias=attn_bias),
        v_proj=nn.Linear(embed_dim, embed_dim, bias=attn_bias),
        output_proj=nn.Linear(embed_dim, embed_dim, bias=attn_bias),
        pos_embeddings=rope,
        is_causal=False,
    )
    mlp = clip_mlp(
        in_dim=embed_dim, hidden_dim=4 * embed_dim, out_dim=embed_dim, activation=activation()
    )
    layer = TransformerSelfAttentionLayer(
        attn=attn,
        mlp=mlp,
        sa_norm=Fp32LayerNorm(embed_dim, eps=1e-5),
        mlp_norm=Fp32LayerNorm(embed_dim, eps=1e-5),
    )
    if use_tile_pos_embed and max_num_tiles > 1:
        pre_tile = TilePositionalEmbedding(max_num_tiles=max_num_tiles, embed_dim=embed_dim)
        post_tile = TilePositionalEmbedding(max_num_tiles=max_num_tiles, embed_dim=embed_dim)
        token_pos: nn.Module = TiledTokenPositionalEmbedding(
            max_num_tiles=max_num_tiles,
            embed_dim=embed_dim,
            patch_size=patch_size,
            tile_size=tile_size,
        )
    else:
        pre_tile = post_tile = None
        token_pos = TokenPositionalEmbedding(
            embed_dim=embed_dim, patch_size=patch_size, tile_size=tile_size
        )
    return CLIPVisionTransformer(
        num_layers=num_layers,
        layer=layer,
        token_pos_embedding=token_pos,
        pre_tile_pos_embed=pre_tile,
        post_tile_pos_embed=post_tile,
        cls_projection=cls_projection,
        out_indices=out_indices,
        tile_size=tile_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        in_channels=in_channels,
        append_cls_token=append_cls_token,
    )


def clip_text_encoder(
    embed_dim: int,
    num_heads: int,
    num_layers: int,
    vocab_size: int = 49408,
    max_seq_len: int = 77,
    norm_eps: float = 1e-5,
) -> CLIPTextEncoder:
    """CLIP's text encoder (https://arxiv.org/abs/2103.00020): ``num_layers`` pre-LayerNorm
    causal self-attention layers of width ``embed_dim`` (``num_heads`` heads, biased
    projections, a ``4 * embed_dim`` QuickGELU MLP) and a final LayerNorm.

    Raises:
        ValueError: ``embed_dim`` is not a multiple of ``num_heads``.
    """
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
    attn = MultiHeadAttention(
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=embed_dim // num_heads,
        q_proj=nn.Linear(embed_dim, embed_dim),
        k_proj=nn.Linear(embed_dim, embed_dim),
        v_proj=nn.Linear(embed_dim, embed_dim),
        output_proj=nn.Linear(embed_dim, embed_dim),
        is_causal=True,
    )
    mlp = clip_mlp(
        in_dim=embed_dim, out_dim=embed_dim, hidden_dim=4 * embed_dim, activation=QuickGELU()
    )
    layer = TransformerSelfAttentionLayer(
        attn=attn,
        mlp=mlp,
        sa_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
        mlp_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
    )
    return CLIPTextEncoder(
        layer=layer,
        final_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        embed_dim=embed_dim,
        num_layers=num_layers,
    )


def clip_mlp(
    in_dim: int,
    out_dim: int,
    hidden_dim: int,
    activation: nn.Module,
    quantize_base: bool = False,
    **quantization_kwargs: Any,
) -> FeedForward:
    """CLIP's MLP ``down(act(gate(x)))``, both projections biased (NF4-frozen with
    ``quantize_base``). ``x [..., in_dim] -> [..., out_dim]``."""

    def linear(i: int, o: int) -> nn.Module:
        if quantize_base:
            return FrozenNF4Linear(i, o, bias=True, **quantization_kwargs)
        return nn.Linear(i, o)

    return FeedForward(
        gate_proj=linear(in_dim, hidden_dim),
        down_proj=linear(hidden_dim, out_dim),
        up_proj=None,
        activation=activation,
    )
