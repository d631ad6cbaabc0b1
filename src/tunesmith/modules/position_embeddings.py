"""torchtune 0.6.1's rotary position-embedding modules (``torchtune.modules.position_embeddings``,
``torchtune.models.llama3_1.Llama3ScaledRoPE``, ``torchtune.models.phi3.
Phi3RotaryPositionalEmbeddings``), for code that applies RoPE to ``[b, s, n_h, h_d]`` tensors
itself.

These rotate *interleaved* pairs ``(x[2i], x[2i+1])`` (Meta's layout, as torchtune's do),
except the Phi-3 module, which rotates halves. tunesmith's own models do not use them: their
decoder computes ``cos, sin`` once (:class:`~tunesmith.modules.rope.RotaryEmbedding`) in the
Hugging Face rotate-half layout (see docs/coming-from-torchtune.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Llama3ScaledRoPE",
    "Phi3RotaryPositionalEmbeddings",
    "Qwen2RotaryPositionalEmbeddings",
    "RotaryPositionalEmbeddings",
    "VisionRotaryPositionalEmbeddings",
]


def _inv_freq(dim: int, base: float) -> Tensor:
    """``theta [dim // 2]``: ``base ** (-2i / dim)``."""
    return 1.0 / (base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))


def _rotate_pairs(x: Tensor, cache: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x [..., d]`` by ``cache [..., d // 2, 2]`` (cos, sin),
    broadcast against ``x`` viewed as ``[..., d // 2, 2]``; float32 math, ``x``'s dtype out."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = cache[..., 0], cache[..., 1]
    out = torch.stack(
        [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin],
        dim=-1,
    )
    return out.flatten(-2).type_as(x)


class RotaryPositionalEmbeddings(nn.Module):
    """RoPE (https://arxiv.org/abs/2104.09864) over interleaved pairs of each head.

    Args:
        dim: the head dimension ``h_d`` (even).
        max_seq_len: positions cached (``cache [max_seq_len, dim // 2, 2]``).
        base: the frequency base.

    ``forward(x [b, s, n_h, h_d], *, input_pos [b, s] | [s] | None) -> [b, s, n_h, h_d]``;
    ``input_pos`` None means positions ``0 .. s-1``.
    """

    def __init__(self, dim: int, max_seq_len: int = 4096, base: int = 10_000) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        self.max_seq_len = max_seq_len
        self.rope_init()

    def _theta(self) -> Tensor:
        return _inv_freq(self.dim, self.base)

    def rope_init(self) -> None:
        """(Re)build ``theta`` and the cache (after moving off the meta device)."""
        self.register_buffer("theta", self._theta(), persistent=False)
        self.build_rope_cache(self.max_seq_len)

    def build_rope_cache(self, max_seq_len: int = 4096) -> None:
        """Cache ``cos, sin`` of every position below ``max_seq_len``."""
        positions = torch.arange(max_seq_len, dtype=self.theta.dtype, device=self.theta.device)
        angles = torch.outer(positions, self.theta).float()
        self.register_buffer(
            "cache", torch.stack([angles.cos(), angles.sin()], dim=-1), persistent=False
        )

    def forward(self, x: Tensor, *, input_pos: Tensor | None = None) -> Tensor:
        s = x.size(1)
        cache = self.cache[:s] if input_pos is None else self.cache[input_pos]
        cache = cache.view(-1, s, 1, x.size(-1) // 2, 2)
        return _rotate_pairs(x, cache)


class Llama3ScaledRoPE(RotaryPositionalEmbeddings):
    """Llama 3.1's RoPE: frequencies whose wavelength exceeds ``old_context_len /
    low_freq_factor`` are divided by ``scale_factor``, those below ``old_context_len /
    high_freq_factor`` kept, the band between interpolated smoothly. Interleaved layout and
    ``forward`` as :class:`RotaryPositionalEmbeddings`.
    """

    def __init__(
        self,
        dim: int,
        max_seq_len: int = 4096,
        base: int = 10_000,
        scale_factor: int = 8,
        low_freq_factor: int = 1,
        high_freq_factor: int = 4,
        old_context_len: int = 8192,
    ) -> None:
        self.scale_factor = scale_factor
        self.low_freq_factor = low_freq_factor
        self.high_freq_factor = high_freq_factor
        self.old_context_len = old_context_len
        self.is_cache_built = False
        nn.Module.__init__(self)
        self.dim = dim
        self.base = base
        self.max_seq_len = max_seq_len
        self.rope_init()

    def rope_init(self) -> None:
        if torch.empty(0).is_meta:  # under a meta default device: build later
            return
        super().rope_init()
        self.is_cache_built = True

    def _theta(self) -> Tensor:
        return self.apply_scaling(
            _inv_freq(self.dim, self.base),
            self.scale_factor,
            self.low_freq_factor,
            self.high_freq_factor,
            self.old_context_len,
        )

    def apply_scaling(
        self,
        freqs: Tensor,
        scale_factor: int,
        low_freq_factor: int,
        high_freq_factor: int,
        old_context_len: int,
    ) -> Tensor:
        """Llama 3.1's frequency scaling of ``freqs [dim // 2]``."""
        wavelen = 2 * math.pi / freqs
        smooth = (old_context_len / wavelen - low_freq_factor) / (
            high_freq_factor - low_freq_factor
        )
        blended = (1 - smooth) * freqs / scale_factor + smooth * freqs
        out = torch.where(
            wavelen > old_context_len / low_freq_factor, freqs / scale_factor, blended
        )
        return torch.where(wavelen < old_context_len / high_freq_factor, freqs, out)

    def forward(self, x: Tensor, *, input_pos: Tensor | None = None) -> Tensor:
        if not self.is_cache_built:
            raise RuntimeError("RoPE cache is not built. Please call rope_init() first.")
        return super().forward(x, input_pos=input_pos)


class Phi3RotaryPositionalEmbeddings(nn.Module):
    """Phi-3's RoPE: rotates the two halves of each head (``[-x2, x1]``).

    ``forward(x [b, s, n_h, h_d], input_pos [b, s] | None) -> [b, s, n_h, h_d]``.
    """

    def __init__(self, dim: int, max_seq_len: int = 4096, base: int = 10_000) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        self.max_seq_len = max_seq_len
        self.rope_init()

    def rope_init(self) -> None:
        self.register_buffer("theta", _inv_freq(self.dim, self.base), persistent=False)
        self.build_rope_cache(self.max_seq_len)

    def build_rope_cache(self, max_seq_len: int = 4096) -> None:
        """``cache [max_seq_len, 2 * dim]``: cos of both halves, then sin."""
        positions = torch.arange(max_seq_len, dtype=self.theta.dtype, device=self.theta.device)
        angles = torch.outer(positions, self.theta).float()
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cache", torch.cat([angles.cos(), angles.sin()], -1), persistent=False)

    def forward(self, x: Tensor, input_pos: Tensor | None = None) -> Tensor:
        s, d = x.size(1), x.size(-1)
        cache = self.cache[:s] if input_pos is None else self.cache[input_pos]
        cache = cache.view(-1, s, 1, 2 * d)
        cos, sin = cache[..., :d], cache[..., d:]
        rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
        return (x * cos + rotated * sin).type_as(x)


class Qwen2RotaryPositionalEmbeddings(Phi3RotaryPositionalEmbeddings):
    """Qwen2's RoPE: as :class:`Phi3RotaryPositionalEmbeddings` (halves rotated), base 1e6."""

    def __init__(self, dim: int, max_seq_len: int = 4096, base: float = 1_000_000.0) -> None:
        super().__init__(dim, max_seq_len, base)  # type: ignore[arg-type]


class VisionRotaryPositionalEmbeddings(nn.Module):
    """2-D RoPE over the patches of image tiles: the first half of each head's frequencies
    rotates by the patch's column + 1, the second by its row + 1; the CLS token (appended
    last, or first when ``append_cls_token=False``) is not rotated.

    Args:
        patch_size, tile_size: pixels; a tile holds ``(tile_size // patch_size) ** 2`` patches.
        max_num_tiles: tiles per image.
        dim: the head dimension.
        base: the frequency base.
        append_cls_token: where the CLS token sits in each tile's sequence.

    ``forward(x [b, max_num_tiles * (patches + 1), n_h, h_d]) -> same shape``.
    """

    def __init__(
        self,
        patch_size: int,
        tile_size: int,
        max_num_tiles: int,
        dim: int,
        base: int = 10_000,
        append_cls_token: bool = True,
    ) -> None:
        super().__init__()
        self.patch_grid_size = tile_size // patch_size
        self.max_num_tiles = max_num_tiles
        self.dim = dim
        self.base = base
        self.append_cls_token = append_cls_token
        self.rope_init()

    def rope_init(self) -> None:
        self.register_buffer("theta", _inv_freq(self.dim, self.base), persistent=False)
        self.build_rope_cache()

    def build_rope_cache(self) -> None:
        """``cache [patches + 1, dim, 2]`` (cos, sin)."""
        grid = self.patch_grid_size
        idx = torch.arange(grid * grid, dtype=self.theta.dtype, device=self.theta.device)
        cls = torch.full((1,), -1.0, dtype=idx.dtype, device=idx.device)
        idx = torch.cat([idx, cls] if self.append_cls_token else [cls, idx])
        x_angles = torch.outer(idx % grid + 1, self.theta).float()
        y_angles = torch.outer(idx // grid + 1, self.theta).float()
        angles = torch.cat([x_angles, y_angles], dim=-1).masked_fill(idx[:, None] < 0, 0)
        self.register_buffer(
            "cache", torch.stack([angles.cos(), angles.sin()], dim=-1), persistent=False
        )

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        b, _, n_h, h_d = x.shape
        tiles = x.reshape(b, self.max_num_tiles, -1, n_h, h_d)
        s = tiles.size(2)
        if s != self.cache.shape[0]:
            raise ValueError(
                f"Input sequence length {s} does not match 2D RoPE cache sequence length "
                f"{self.cache.shape[0]} (max_num_tiles={self.max_num_tiles} tiles of "
                f"{self.patch_grid_size**2} patches + CLS)."
            )
        out = _rotate_pairs(tiles, self.cache.view(1, 1, s, 1, h_d // 2, 2))
        return out.reshape(b, self.max_num_tiles * s, n_h, h_d)
