"""CLIP vision position embeddings in torchtune's (and Meta's) grid layout.

torchtune's tiled CLIP encoder (``torchtune.models.clip``) keeps the tile embeddings as one
grid over tile positions, ``[T, T, ., d]`` (``T`` = max tiles per side), and adds the cells
``[:h, :w]`` of an image of ``h x w`` tiles (its ``aspect_ratio``, ``[n, 2]``) to its first
``h * w`` tiles, row-major. tunesmith's own Llama 3.2 Vision encoder
(:mod:`tunesmith.modules.vision_transformer`) keeps transformers' per-aspect-ratio-id rows
instead; ``models._convert_vision_meta`` converts between the two.

Loading a state dict made for other sizes interpolates (bilinear, ``align_corners=True``, as
Meta's reference code): the token grid of a tile (class token kept as is) and the tile grid.
Shapes: ``n`` images, ``T`` tiles, ``L = (tile_size // patch_size) ** 2 + 1`` tokens per tile
(a class token first), ``d`` width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TiledTokenPositionalEmbedding", "TilePositionalEmbedding", "TokenPositionalEmbedding"]


def _bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x [N, C, H, W] -> [N, C, *size]``, corners aligned."""
    return F.interpolate(x, size=list(size), mode="bilinear", align_corners=True)


def _on_full_tensor(value: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn(value)``; a sharded ``DTensor`` is gathered first and sharded the same way after."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(value, DTensor):
        mesh, placements = value.device_mesh, value.placements
        return distribute_tensor(fn(value.full_tensor()), mesh, placements)
    return fn(value)


def _grid_side(n_tokens: int, what: str) -> int:
    side = math.isqrt(n_tokens - 1) if n_tokens >= 1 else -1
    if side < 0 or side * side != n_tokens - 1:
        raise ValueError(
            f"{what} has {n_tokens} tokens per tile, which is not a square patch grid plus a "
            "class token; only square grids can be interpolated"
        )
    return side


def _hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    module._load_state_dict_hook(state_dict, prefix)  # type: ignore[operator]


def _grid_mask(aspect_ratio: Tensor, max_num_tiles: int, n_tiles: int) -> list[tuple[int, int]]:
    """``(h, w)`` tiles of each image, checked against the grid and the tiles given."""
    out = []
    for h, w in aspect_ratio.tolist():
        h, w = int(h), int(w)
        if h > max_num_tiles or w > max_num_tiles or h * w > n_tiles:
            raise ValueError(
                f"aspect ratio {h}x{w} does not fit {n_tiles} tiles of a {max_num_tiles}-tile grid"
            )
        out.append((h, w))
    return out


class TokenPositionalEmbedding(nn.Module):
    """One learned embedding per token of a tile: ``x + positional_embedding``.

    ``positional_embedding [L, d]``; ``forward(x [..., L, d], *args) -> [..., L, d]`` (extra
    arguments, e.g. an aspect ratio, are ignored).
    """

    def __init__(self, embed_dim: int, tile_size: int, patch_size: int) -> None:
        super().__init__()
        n_tokens = (tile_size // patch_size) ** 2 + 1
        self.positional_embedding = nn.Parameter(embed_dim**-0.5 * torch.randn(n_tokens, embed_dim))

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        return x + self.positional_embedding


class TiledTokenPositionalEmbedding(nn.Module):
    """Per-token embeddings shared by all tiles (local) plus per-tile-position ones (global).

    ``x + (1 - tanh(gate)) * local + tanh(gate) * global[:h, :w]`` (the global term on each
    image's first ``h * w`` tiles). Parameters ``local_token_positional_embedding [L, d]``,
    ``global_token_positional_embedding [T, T, L, d]``, ``gate [1]`` (0: global closed).
    ``forward(x [n, T, L, d], aspect_ratio [n, 2]) -> [n, T, L, d]``.
    """

    def __init__(self, max_num_tiles: int, embed_dim: int, tile_size: int, patch_size: int):
        super().__init__()
        self.n_tokens_per_tile = (tile_size // patch_size) ** 2 + 1
        scale = embed_dim**-0.5
        n, t = self.n_tokens_per_tile, max_num_tiles
        self.local_token_positional_embedding = nn.Parameter(scale * torch.randn(n, embed_dim))
        self.global_token_positional_embedding = nn.Parameter(
            scale * torch.randn(t, t, n, embed_dim)
        )
        self.gate = nn.Parameter(torch.zeros(1))
        self.register_load_state_dict_pre_hook(_hook)

    @torch.no_grad()
    def _load_state_dict_hook(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Interpolate a loaded local / global embedding of other sizes to this module's.

        Raises:
            ValueError: a loaded embedding's tokens are not a square grid plus a class token,
                or the result still does not match this module's shape.
        """
        key = prefix + "local_token_positional_embedding"
        if state_dict.get(key) is not None:
            loaded = state_dict[key]
            _grid_side(loaded.shape[0], "the loaded local positional embedding")
            target = self.local_token_positional_embedding.shape
            side = math.isqrt(target[0] - 1)
            state_dict[key] = _on_full_tensor(
                loaded, lambda t: self._resize_local_position_embedding(t, side)
            )
            if state_dict[key].shape != target:
                raise ValueError(
                    f"local positional embedding {tuple(state_dict[key].shape)} after "
                    f"interpolation does not match the model's {tuple(target)}"
                )
        key = prefix + "global_token_positional_embedding"
        if state_dict.get(key) is not None:
            loaded = state_dict[key]
            _grid_side(loaded.shape[2], "the loaded global positional embedding")
            target = self.global_token_positional_embedding.shape
            tiles, side = target[0], math.isqrt(target[2] - 1)
            state_dict[key] = _on_full_tensor(
                loaded, lambda t: self._resize_global_position_embedding(t, tiles, side)
            )
            if state_dict[key].shape != target:
                raise ValueError(
                    f"global positional embedding {tuple(state_dict[key].shape)} after "
                    f"interpolation does not match the model's {tuple(target)}"
                )

    @staticmethod
    def _resize_local_position_embedding(
        local_pos_embed: Tensor, tgt_patch_grid_size: int
    ) -> Tensor:
        """``[g * g + 1, d] -> [tgt * tgt + 1, d]``: the patch grid interpolated, the class
        token (row 0) kept."""
        n_tokens, dim = local_pos_embed.shape
        side = math.isqrt(n_tokens - 1)
        cls, grid = local_pos_embed[:1], local_pos_embed[1:]
        grid = grid.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = _bilinear(grid, (tgt_patch_grid_size, tgt_patch_grid_size))
        grid = grid.permute(0, 2, 3, 1).reshape(-1, dim)
        return torch.cat([cls, grid], dim=0).contiguous()

    @staticmethod
    def _resize_global_position_embedding(
        global_pos_embed: Tensor, tgt_max_num_tiles: int, tgt_patch_grid_size: int
    ) -> Tensor:
        """``[T, T, g * g + 1, d] -> [t, t, tgt * tgt + 1, d]``: the patch grids of all tiles
        laid out as one ``T * g`` square image and interpolated together; the class tokens
        form their own ``T x T`` grid."""
        tiles, _, n_tokens, dim = global_pos_embed.shape
        side = math.isqrt(n_tokens - 1)
        t, g = tgt_max_num_tiles, tgt_patch_grid_size
        cls, grid = global_pos_embed[:, :, :1], global_pos_embed[:, :, 1:]
        # [T(y), T(x), g(y), g(x), d] -> one image [1, d, T * g (y), T * g (x)]
        image = grid.reshape(tiles, tiles, side, side, dim).permute(0, 2, 1, 3, 4)
        image = image.reshape(1, tiles * side, tiles * side, dim).permute(0, 3, 1, 2)
        image = _bilinear(image, (t * g, t * g)).permute(0, 2, 3, 1)[0]  # [t*g, t*g, d]
        grid = image.reshape(t, g, t, g, dim).permute(0, 2, 1, 3, 4).reshape(t, t, g * g, dim)
        cls = _bilinear(cls.permute(2, 3, 0, 1), (t, t)).permute(2, 3, 0, 1)  # [t, t, 1, d]
        return torch.cat([cls, grid], dim=2).contiguous()

    def forward(self, x: Tensor, aspect_ratio: Tensor) -> Tensor:
        n, n_tiles, n_tokens, dim = x.shape
        gate = self.gate.tanh()
        x = x + self.local_token_positional_embedding * (1 - gate)
        grid = self.global_token_positional_embedding
        extra = x.new_zeros(n, n_tiles, n_tokens, dim)
        for i, (h, w) in enumerate(_grid_mask(aspect_ratio, grid.shape[0], n_tiles)):
            extra[i, : h * w] = grid[:h, :w].reshape(h * w, n_tokens, dim)
        return x + extra * gate


class TilePositionalEmbedding(nn.Module):
    """One gated embedding per tile position, the same for every token of the tile.

    ``x + tanh(gate) * embedding[:h, :w]`` on each image's first ``h * w`` tiles; parameters
    ``embedding [T, T, 1, d]``, ``gate [1]``. ``forward(x [n, T, L, d], aspect_ratio [n, 2])
    -> [n, T, L, d]``.
    """

    def __init__(self, max_num_tiles: int, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding = nn.Parameter(
            embed_dim**-0.5 * torch.randn(max_num_tiles, max_num_tiles, 1, embed_dim)
        )
        self.gate = nn.Parameter(torch.zeros(1))
        self.register_load_state_dict_pre_hook(_hook)

    @torch.no_grad()
    def _load_state_dict_hook(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Interpolate a loaded ``embedding`` of another tile grid to this module's.

        Raises:
            ValueError: its token or width dimension differs from this module's, its tile grid
                is not square, or the result does not match this module's shape.
        """
        key = prefix + "embedding"
        loaded = state_dict.get(key)
        if loaded is None:
            return
        target = self.embedding.shape
        if tuple(loaded.shape[2:]) != tuple(target[2:]):
            raise ValueError(
                f"tile positional embedding {tuple(loaded.shape)} has other token / width "
                f"dimensions than the model's {tuple(target)}"
            )
        if loaded.shape[0] != loaded.shape[1]:
            raise ValueError(
                f"tile positional embedding {tuple(loaded.shape)}: the tile grid must be square"
            )
        state_dict[key] = _on_full_tensor(
            loaded, lambda t: self._resize_position_embedding(t, target[0])
        )
        if state_dict[key].shape != target:
            raise ValueError(
                f"tile positional embedding {tuple(state_dict[key].shape)} after interpolation "
                f"does not match the model's {tuple(target)}"
            )

    @staticmethod
    def _resize_position_embedding(embedding: Tensor, tgt_max_num_tiles: int) -> Tensor:
        """``[T, T, L, d] -> [t, t, L, d]``, the tile grid interpolated."""
        size = (tgt_max_num_tiles, tgt_max_num_tiles)
        return _bilinear(embedding.permute(2, 3, 0, 1), size).permute(2, 3, 0, 1).contiguous()

    def forward(self, x: Tensor, aspect_ratio: Tensor) -> Tensor:
        n, n_tiles, _, dim = x.shape
        extra = x.new_zeros(n, n_tiles, 1, dim)
        for i, (h, w) in enumerate(_grid_mask(aspect_ratio, self.embedding.shape[0], n_tiles)):
            extra[i, : h * w] = self.embedding[:h, :w].reshape(h * w, 1, dim)
        return x + extra * self.gate.tanh()
