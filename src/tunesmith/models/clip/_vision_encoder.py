"""torchtune's CLIP vision transformer (``clip_vision_encoder``'s model): the tiled ViT in
torchtune's layout and calling convention.

It differs from :class:`tunesmith.modules.VisionTransformer` (Llama 3.2 Vision as
transformers runs it) in what torchtune's CLIP does: position embeddings in the grid layout
taking ``aspect_ratio [n, 2]`` (:mod:`tunesmith.models.clip._position_embeddings`), optional
tile embeddings (one-tile encoders have none), tokens neither padded nor masked (padding
tiles attend and are attended), the class token first or last, the taps taken *before* the
tapped layers, and an optional projection of each tile's class token. The layers are
tunesmith's :class:`~tunesmith.modules.TransformerSelfAttentionLayer` s, called torchtune's
way. Shapes: ``b`` samples, ``i`` images per sample, ``T`` tiles, ``L`` tokens per tile
(patches + 1), ``d`` width.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from tunesmith.modules.norms import Fp32LayerNorm

__all__ = ["CLIPVisionTransformer", "CLSProjection", "TiledCLSEmbedding"]


class TiledCLSEmbedding(nn.Module):
    """A learned class token ``weight [d]`` added to every tile, first (or last with
    ``append_cls_token``): ``[n, T, P, d] -> [n, T, P + 1, d]``."""

    def __init__(self, embed_dim: int, append_cls_token: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim))
        self.append_cls_token = append_cls_token

    def forward(self, x: Tensor) -> Tensor:
        n, t, _, d = x.shape
        cls = self.weight.broadcast_to(n, t, 1, d)
        return torch.cat([x, cls] if self.append_cls_token else [cls, x], dim=2)


class CLSProjection(nn.Module):
    """Each tile's class token (token 0) times ``weight [d, out]``:
    ``[b, i, T, L, d] -> [b, i, T, 1, out]``."""

    def __init__(self, embed_dim: int, cls_output_dim: int) -> None:
        super().__init__()
        self.cls_output_dim = cls_output_dim
        self.weight = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, cls_output_dim))

    def forward(self, x: Tensor) -> Tensor:
        b, i, t, _, _ = x.shape
        return (x[:, :, :, 0] @ self.weight).reshape(b, i, t, 1, self.cls_output_dim)


class CLIPVisionTransformer(nn.Module):
    """Patch conv, tile / token position embeddings, class token, ``num_layers`` copies of
    ``layer`` between ``ln_pre`` and ``ln_post`` (Fp32 LayerNorms), optional class-token
    projection.

    ``forward(images [b, i, T, C, tile, tile], aspect_ratio [b, i, 2] | None)`` ->
    ``(x, hidden_states)``: ``x [b, i, T, L, d]`` (``[b, i, T, 1, out]`` with
    ``cls_projection``) and, per ``out_indices`` entry, the input of that layer
    ``[b, i, T, L, d]``. Without ``aspect_ratio`` every image must be one tile.

    Raises:
        ValueError: non-positive ``tile_size`` / ``patch_size``, more ``out_indices`` than
            layers, or a multi-tile batch without ``aspect_ratio``.
    """

    def __init__(
        self,
        patch_size: int,
        tile_size: int,
        num_layers: int,
        embed_dim: int,
        layer: nn.Module,
        token_pos_embedding: nn.Module,
        pre_tile_pos_embed: nn.Module | None = None,
        post_tile_pos_embed: nn.Module | None = None,
        cls_projection: nn.Module | None = None,
        out_indices: list[int] | None = None,
        in_channels: int = 3,
        append_cls_token: bool = False,
    ) -> None:
        super().__init__()
        if tile_size <= 0 or patch_size <= 0:
            raise ValueError(f"tile_size ({tile_size}) and patch_size ({patch_size}) must be > 0")
        if out_indices and len(out_indices) > num_layers:
            raise ValueError(
                f"len(out_indices) must be <= num_layers, got {out_indices} for {num_layers}"
            )
        self.patches_per_tile = (tile_size // patch_size) ** 2
        self.out_indices = list(out_indices or [])
        self.pre_tile_pos_embed = pre_tile_pos_embed
        self.post_tile_pos_embed = post_tile_pos_embed
        self.token_pos_embedding = token_pos_embedding
        self.cls_projection = cls_projection
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.conv = nn.Conv2d(
            in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=False
        )
        self.ln_post = Fp32LayerNorm(embed_dim)
        self.ln_pre = Fp32LayerNorm(embed_dim)
        self.cls_token_embedding = TiledCLSEmbedding(embed_dim, append_cls_token)

    def get_image_tokens_per_tile(self) -> int:
        """``L``: patches of a tile plus the class token."""
        return self.patches_per_tile + 1

    def forward(
        self, images: Tensor, aspect_ratio: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        b, i, t, c, h, w = images.shape
        n = b * i
        if aspect_ratio is None:
            if t > 1:
                raise ValueError(
                    f"images of {t} tiles need their aspect_ratio [b, n_imgs, 2] "
                    f"(got images {tuple(images.shape)} and no aspect_ratio)"
                )
            aspect_ratio = torch.ones(n, 2, dtype=torch.int, device=images.device)
        aspect_ratio = aspect_ratio.reshape(n, 2)
        x = self.conv(images.reshape(n * t, c, h, w))  # [n*T, d, h/p, w/p]
        x = x.reshape(n, t, -1, self.patches_per_tile).transpose(2, 3)  # [n, T, P, d]
        if self.pre_tile_pos_embed is not None:
            x = self.pre_tile_pos_embed(x, aspect_ratio)
        x = self.token_pos_embedding(self.cls_token_embedding(x), aspect_ratio)
        x = self.ln_pre(x)
        _, _, tokens, d = x.shape
        x = x.reshape(n, t * tokens, d)
        hidden_states = []
        for idx, block in enumerate(self.layers):
            if idx in self.out_indices:
                hidden_states.append(x.reshape(b, i, t, tokens, d))
            x = block(x)
        x = self.ln_post(x).reshape(n, t, tokens, d)
        if self.post_tile_pos_embed is not None:
            x = self.post_tile_pos_embed(x, aspect_ratio)
        x = x.reshape(b, i, t, tokens, d)
        if self.cls_projection is not None:
            x = self.cls_projection(x)
        return x, hidden_states
