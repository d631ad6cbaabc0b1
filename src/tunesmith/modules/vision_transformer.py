"""Tiled CLIP-style vision transformer (Llama 3.2 Vision's image encoder) and its pieces.

An image is cut into up to ``max_num_tiles`` square tiles of ``tile_size`` pixels (see
``tunesmith.data.vision``); every tile becomes ``L = (tile_size / patch_size) ** 2 + 1``
tokens (patches plus a class token). The aspect ratio of the tile grid is given as an
``aspect_ratio_id`` (1-based index into the model's supported ratios, 0 = padding image),
which selects learned tile / tiled-token position embeddings.

Shapes used below: ``n`` images (batch times images per sample), ``T`` tiles per image,
``L`` tokens per tile, ``Lp`` that rounded up to ``pad_to_multiple``, ``d`` encoder width.
Layers are :class:`~tunesmith.modules.TransformerSelfAttentionLayer` s without RoPE; the
attention, MLP and norm code is the decoder's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.modules.transformer import TransformerSelfAttentionLayer

__all__ = [
    "TanhGate",
    "TilePositionalEmbedding",
    "TiledTokenPositionalEmbedding",
    "CLSEmbedding",
    "TiledVisionOutput",
    "VisionTransformer",
    "tiled_attention_mask",
]


class TanhGate(nn.Module):
    """``x * tanh(scale)``; ``scale [1]`` starts at ``init`` (0: the gated branch starts closed)."""

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.tanh()


class TilePositionalEmbedding(nn.Module):
    """One gated embedding per tile position of each aspect ratio.

    ``embedding [num_aspect_ratios + 1, max_num_tiles * d]`` (row 0: padding images),
    ``gate [1]``. ``forward(x [n, T, L, d], aspect_ratio_ids [n]) -> [n, T, L, d]``.
    """

    def __init__(self, num_aspect_ratios: int, max_num_tiles: int, embed_dim: int):
        super().__init__()
        self.max_num_tiles = max_num_tiles
        self.embed_dim = embed_dim
        self.embedding = nn.Parameter(
            torch.randn(num_aspect_ratios + 1, max_num_tiles * embed_dim) * embed_dim**-0.5
        )
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, aspect_ratio_ids: Tensor) -> Tensor:
        emb = F.embedding(aspect_ratio_ids, self.embedding)
        emb = emb.view(-1, self.max_num_tiles, 1, self.embed_dim)[:, : x.shape[1]]
        return x + emb.to(x.dtype) * self.gate.tanh()


class TiledTokenPositionalEmbedding(nn.Module):
    """Token positions within a tile (local) blended with per-aspect-ratio ones (global).

    ``x + (1 - tanh(gate)) * local + tanh(gate) * global[aspect_ratio_id]`` with
    ``local_token_positional_embedding [L, d]``,
    ``global_token_positional_embedding [num_aspect_ratios + 1, max_num_tiles * L * d]``.
    ``forward(x [n, T, L, d], aspect_ratio_ids [n]) -> [n, T, L, d]``.
    """

    def __init__(self, num_aspect_ratios: int, max_num_tiles: int, num_tokens: int, dim: int):
        super().__init__()
        self.max_num_tiles, self.num_tokens, self.embed_dim = max_num_tiles, num_tokens, dim
        scale = dim**-0.5
        self.local_token_positional_embedding = nn.Parameter(torch.randn(num_tokens, dim) * scale)
        self.global_token_positional_embedding = nn.Parameter(
            torch.randn(num_aspect_ratios + 1, max_num_tiles * num_tokens * dim) * scale
        )
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, aspect_ratio_ids: Tensor) -> Tensor:
        g = self.gate.tanh()
        x = x + ((1 - g) * self.local_token_positional_embedding).to(x.dtype)
        glob = F.embedding(aspect_ratio_ids, self.global_token_positional_embedding)
        glob = glob.view(-1, self.max_num_tiles, self.num_tokens, self.embed_dim)
        return x + (g * glob[:, : x.shape[1]]).to(x.dtype)


class CLSEmbedding(nn.Module):
    """Prepends a learned class token: ``[m, P, d] -> [m, P + 1, d]`` (``weight [d]``)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(embed_dim) * embed_dim**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        cls = self.weight.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1)


def tiled_attention_mask(
    tile_mask: Tensor, num_tokens: int, padded_tokens: int, tile_present: Tensor | None = None
) -> Tensor:
    """Llama 3.2 Vision's encoder mask (Meta's and transformers' rule).

    ``tile_mask [n, T]`` (True = real tile). A token is padding when its tile is padding or
    it is one of the ``padded_tokens - num_tokens`` filler tokens of its tile; a query may
    attend a key unless both are padding. Returns ``[n, T * Lp, T * Lp]`` bool (True = attend).

    ``tile_present [n, T]`` (packing: an image padded to fewer tiles than the batch's): the
    tokens of tiles where it is False are absent; no present token attends them (they attend
    only each other), so the image encodes as if padded to its present tiles only.
    """
    n, t = tile_mask.shape
    token_real = torch.arange(padded_tokens, device=tile_mask.device) < num_tokens
    pad = ~(tile_mask.bool()[:, :, None] & token_real[None, None, :])
    pad = pad.reshape(n, t * padded_tokens)
    mask = ~(pad[:, :, None] & pad[:, None, :])
    if tile_present is None:
        return mask
    present = tile_present.bool().repeat_interleave(padded_tokens, dim=1)  # [n, T * Lp]
    same = present[:, :, None] == present[:, None, :]
    return torch.where(present[:, :, None], mask & same, same)


@dataclass
class TiledVisionOutput:
    """What :class:`VisionTransformer` hands to a projection head.

    ``hidden [n, T, Lp, d]`` after ``ln_post`` and the post-tile embedding, ``taps``: the
    outputs of the tapped layers, each ``[n, T, Lp, d]`` (before ``ln_post``), ``mask``
    ``[n, T * Lp, T * Lp]`` bool, ``num_tokens`` ``L`` (the real tokens of a tile).
    """

    hidden: Tensor
    taps: list[Tensor]
    mask: Tensor
    num_tokens: int


class VisionTransformer(nn.Module):
    """Tiled ViT: patch conv, tile and token position embeddings, class token, layers.

    Args:
        conv: ``nn.Conv2d(C, d, patch_size, stride=patch_size, bias=False)`` (patch embedding).
        cls_token_embedding: :class:`CLSEmbedding`.
        token_pos_embedding: :class:`TiledTokenPositionalEmbedding`.
        pre_tile_pos_embed, post_tile_pos_embed: :class:`TilePositionalEmbedding` s.
        ln_pre, ln_post: ``nn.LayerNorm(d)``.
        layers: self-attention layers (no RoPE; full attention under the padding mask).
        out_indices: layers whose outputs are tapped (0-based, output of that layer).
        pad_to_multiple: tokens per tile are padded to a multiple of this (8, as Meta does).

    ``forward(images [n, T, C, H, W], aspect_ratio_ids [n], tile_mask [n, T] | None,
    tile_present [n, T] | None)`` -> :class:`TiledVisionOutput` (``tile_present``: see
    :func:`tiled_attention_mask`).
    """

    def __init__(
        self,
        *,
        conv: nn.Conv2d,
        cls_token_embedding: CLSEmbedding,
        token_pos_embedding: TiledTokenPositionalEmbedding,
        pre_tile_pos_embed: TilePositionalEmbedding,
        post_tile_pos_embed: TilePositionalEmbedding,
        ln_pre: nn.Module,
        ln_post: nn.Module,
        layers: list[TransformerSelfAttentionLayer] | nn.ModuleList,
        out_indices: tuple[int, ...] = (),
        pad_to_multiple: int = 8,
    ):
        super().__init__()
        self.conv = conv
        self.cls_token_embedding = cls_token_embedding
        self.token_pos_embedding = token_pos_embedding
        self.pre_tile_pos_embed = pre_tile_pos_embed
        self.post_tile_pos_embed = post_tile_pos_embed
        self.ln_pre = ln_pre
        self.ln_post = ln_post
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        bad = [i for i in out_indices if not 0 <= i < len(self.layers)]
        if bad:
            raise ValueError(f"out_indices {bad} are not layers of a {len(self.layers)}-layer ViT")
        self.out_indices = tuple(out_indices)
        self.pad_to_multiple = pad_to_multiple

    def forward(
        self,
        images: Tensor,
        aspect_ratio_ids: Tensor,
        tile_mask: Tensor | None = None,
        tile_present: Tensor | None = None,
    ) -> TiledVisionOutput:
        n, t, c, h, w = images.shape
        dtype = self.conv.weight.dtype
        x = self.conv(images.reshape(n * t, c, h, w).to(dtype))  # [n*T, d, h/p, w/p]
        x = x.flatten(2).transpose(1, 2)  # [n*T, P, d]
        d = x.shape[-1]
        x = self.pre_tile_pos_embed(x.reshape(n, t, -1, d), aspect_ratio_ids)
        x = self.cls_token_embedding(x.reshape(n * t, -1, d))
        num_tokens = x.shape[1]
        x = self.token_pos_embedding(x.reshape(n, t, num_tokens, d), aspect_ratio_ids)
        x = self.ln_pre(x)
        padded = -(-num_tokens // self.pad_to_multiple) * self.pad_to_multiple
        x = F.pad(x, (0, 0, 0, padded - num_tokens))
        if tile_mask is None:
            tile_mask = torch.ones(n, t, dtype=torch.bool, device=x.device)
        mask = tiled_attention_mask(tile_mask, num_tokens, padded, tile_present)
        x = x.reshape(n, t * padded, d)
        taps = []
        for i, layer in enumerate(self.layers):
            x = layer(x, None, None, mask)
            if i in self.out_indices:
                taps.append(x.reshape(n, t, padded, d))
        x = self.ln_post(x).reshape(n, t, padded, d)
        x = self.post_tile_pos_embed(x, aspect_ratio_ids)
        return TiledVisionOutput(hidden=x, taps=taps, mask=mask, num_tokens=num_tokens)
