"""Llama 4's early-fusion vision path: the tile encoder (patch linear, class token, learned
positions, 2-D RoPE), pixel shuffle + MLP projection, and the model that writes the image
features over the ``<|patch|>`` placeholder embeddings of the text decoder.

An image is ``T`` tiles of ``t x t`` pixels (``t = tile_size``; a global thumbnail is the
last tile when the image has more than one, see ``llama4_transform``). A tile is
``P = (t / p) ** 2`` patches plus a class token (appended last); after the encoder the class
token is dropped and pixel shuffle (ratio ``r = 0.5``) folds each ``2 x 2`` block of patches
into one token, so a tile gives ``P * r**2`` decoder tokens: the ``<|patch|>`` runs the
transform writes for that tile.

Shapes used below: ``n`` tiles of all images of a batch, ``C`` channels, ``d`` encoder width,
``D`` decoder width, ``P`` patches per tile. The encoder layers are
:class:`~tunesmith.modules.TransformerSelfAttentionLayer` s (the decoder's attention, MLP and
norm code: LayerNorm, ``fc2(gelu(fc1(x)))``, biased projections); RoPE uses the rotate-half
layout (transformers' interleaved q/k rows are permuted at conversion, as the text
decoder's are), the angles of :class:`~tunesmith.modules.rope.AxialRotaryEmbedding` at
``(column + 1, row + 1)`` and 0 for the class token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.modules._decoder_facade import DecoderFacade
from tunesmith.modules.rope import AxialRotaryEmbedding
from tunesmith.modules.transformer import TransformerDecoder, TransformerSelfAttentionLayer

__all__ = [
    "Llama4EarlyFusionModel",
    "Llama4VisionEncoder",
    "Llama4VisionProjection",
    "Llama4VisionTransformer",
    "pixel_shuffle",
]


def pixel_shuffle(x: Tensor, ratio: float) -> Tensor:
    """``[n, P, d] -> [n, P * ratio**2, d / ratio**2]`` over the ``sqrt(P) x sqrt(P)`` grid
    (transformers' Llama 4 order: columns folded first, then rows)."""
    n, p, d = x.shape
    side = int(p**0.5)
    x = x.reshape(n, side, int(side * ratio), int(d / ratio))
    x = x.permute(0, 2, 1, 3).reshape(n, int(side * ratio), int(side * ratio), int(d / ratio**2))
    return x.permute(0, 2, 1, 3).reshape(n, -1, int(d / ratio**2))


class Llama4VisionTransformer(nn.Module):
    """The tile encoder: ``forward(images [n, C, t, t]) -> [n, P, d]`` (class token dropped).

    Args:
        patch_embed: ``nn.Linear(C * p * p, d, bias=False)`` over unfolded ``p x p`` patches
            (channel-major, as ``nn.Unfold`` lays them out).
        layers: bidirectional self-attention layers (2-D RoPE inside attention).
        patch_size, tile_size: pixels.
        head_dim: per-head width (for the 2-D RoPE).
        rope_base: 2-D RoPE base.
    """

    def __init__(
        self,
        *,
        patch_embed: nn.Linear,
        layers: list[TransformerSelfAttentionLayer] | nn.ModuleList,
        patch_size: int,
        tile_size: int,
        head_dim: int,
        rope_base: float = 10_000.0,
    ):
        super().__init__()
        d = patch_embed.out_features
        self.patch_size, self.tile_size = patch_size, tile_size
        side = tile_size // patch_size
        self.patch_embed = patch_embed
        self.cls_embedding = nn.Parameter(torch.randn(d) * d**-0.5)
        self.pos_embedding = nn.Parameter(torch.randn(side * side + 1, d) * d**-0.5)
        self.ln_pre = nn.LayerNorm(d)
        self.ln_post = nn.LayerNorm(d)
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.rope = AxialRotaryEmbedding(head_dim, rope_base)

    def _positions(self, device: torch.device) -> Tensor:
        """``[P + 1, 2]``: (column + 1, row + 1) per patch, (0, 0) for the class token."""
        side = self.tile_size // self.patch_size
        idx = torch.arange(side * side, device=device)
        pos = torch.stack([idx % side + 1, idx // side + 1], dim=-1)
        return torch.cat([pos, torch.zeros(1, 2, dtype=pos.dtype, device=device)])

    def forward(self, images: Tensor) -> Tensor:
        n, _, h, w = images.shape
        if h != self.tile_size or w != self.tile_size:
            raise ValueError(
                f"image tiles are {h}x{w} pixels but the encoder takes {self.tile_size}x"
                f"{self.tile_size}: set the transform's image_size to the model's"
            )
        dtype = self.patch_embed.weight.dtype
        patches = F.unfold(images.to(dtype), self.patch_size, stride=self.patch_size)
        x = self.patch_embed(patches.transpose(1, 2))  # [n, P, d]
        x = torch.cat([x, self.cls_embedding.expand(n, 1, -1).to(x.dtype)], dim=1)
        x = self.ln_pre(x + self.pos_embedding.to(x.dtype))
        cos, sin = self.rope(self._positions(x.device), x.dtype)
        full = torch.ones(1, x.shape[1], x.shape[1], dtype=torch.bool, device=x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, full)
        return self.ln_post(x)[:, :-1]


class Llama4VisionProjection(nn.Module):
    """Pixel shuffle, ``gelu(fc2(gelu(fc1(.))))`` and ``output`` (transformers'
    ``vision_adapter`` + ``multi_modal_projector``): ``[n, P, d] -> [n, P * r**2, D]``."""

    def __init__(self, fc1: nn.Module, fc2: nn.Module, output: nn.Module, ratio: float = 0.5):
        super().__init__()
        self.fc1, self.fc2, self.output = fc1, fc2, output
        self.ratio = ratio

    def forward(self, x: Tensor) -> Tensor:
        x = pixel_shuffle(x, self.ratio)
        return self.output(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class Llama4VisionEncoder(nn.Module):
    """``clip`` (:class:`Llama4VisionTransformer`) then ``projection`` (the fusion part):
    ``forward(images [n, C, t, t]) -> [n * P * r**2, D]``, tiles in order."""

    def __init__(self, clip: Llama4VisionTransformer, projection: Llama4VisionProjection):
        super().__init__()
        self.clip = clip
        self.projection = projection

    @property
    def tile_size(self) -> int:
        return self.clip.tile_size

    @property
    def layers(self) -> nn.ModuleList:
        """The tile encoder's layers (FSDP2 shards each as a unit, as the decoder's)."""
        return self.clip.layers

    def forward(self, images: Tensor) -> Tensor:
        out = self.projection(self.clip(images))
        return out.reshape(-1, out.shape[-1])


class Llama4EarlyFusionModel(DecoderFacade):
    """Early fusion: the encoder's tokens replace the ``image_token_id`` (``<|patch|>``)
    embeddings, in order; the decoder (Llama 4's text decoder) runs on the result.

    ``forward(tokens [b, s], images [n, C, t, t] | None = None, *, mask, input_pos,
    encoder_input=None, encoder_mask=None, **decoder_kwargs) -> logits [b, s, V]``
    (``encoder_input``: ``{"images": [n, C, t, t]}`` as the transform's ``collate`` makes it,
    instead of ``images``; ``encoder_mask`` must be None: there is no cross-attention). The
    placeholder count must equal ``n * P * r**2``. Decoder attributes (``layers``,
    ``setup_caches``, ...) resolve on ``decoder`` (:class:`DecoderFacade`).
    """

    def __init__(
        self, *, decoder: TransformerDecoder, encoder: Llama4VisionEncoder, image_token_id: int
    ):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder
        self.image_token_id = image_token_id

    def forward(
        self,
        tokens: Tensor,
        images: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        input_pos: Tensor | None = None,
        encoder_input: dict[str, Tensor] | None = None,
        encoder_mask: Tensor | None = None,
        **decoder_kwargs: object,
    ) -> Tensor | list[Tensor]:
        if encoder_mask is not None:
            raise ValueError("Llama 4 has no cross-attention: encoder_mask must be None")
        if encoder_input is not None:
            images = encoder_input.get("images")
        h = self.decoder.tok_embeddings(tokens)
        is_img = tokens == self.image_token_id
        if images is not None and images.numel():
            feats = self.encoder(images)
            if int(is_img.sum()) != feats.shape[0]:
                raise ValueError(
                    f"{int(is_img.sum())} <|patch|> placeholder tokens but the images give "
                    f"{feats.shape[0]} image tokens"
                )
            h = h.masked_scatter(is_img[..., None], feats.to(h.dtype))
        elif bool(is_img.any()) and not (
            self.decoder.caches_are_enabled() and self.decoder._cache_pos > 0
        ):
            raise ValueError("<|patch|> placeholder tokens in the text but no images")
        return self.decoder(None, mask=mask, input_pos=input_pos, input_embeds=h, **decoder_kwargs)
