"""Flux's image autoencoder (the KL-regularised VAE of FLUX.1; torchtune's
``FluxAutoencoder``): a convolutional encoder of ResNet blocks with stride-2 downsampling,
one self-attention block in the middle, and a latent sampled from the predicted diagonal
Gaussian; the decoder mirrors it with nearest-neighbour upsampling.

Shapes: images ``[b, C, H, W]``; latents ``[b, ch_z, H / 2^k, W / 2^k]`` with ``k`` the
number of resampling stages (``len(channels) - 1``). Normalisation is ``GroupNorm(32)``
(channel counts must be multiples of 32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.modules.attention import MultiHeadAttention

__all__ = ["FluxAutoencoder", "FluxDecoder", "FluxEncoder"]


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=ch, eps=1e-6, affine=True)


def _conv3(ch_in: int, ch_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(ch_in, ch_out, kernel_size=3, stride=stride, padding=padding)


class ResnetLayer(nn.Module):
    """``main(x) + shortcut(x)``: two (GroupNorm, SiLU, 3x3 conv) steps; the shortcut is a
    1x1 conv when the channel count changes."""

    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.main = nn.Sequential(
            _norm(ch_in), nn.SiLU(), _conv3(ch_in, ch_out), _norm(ch_out), nn.SiLU(),
            _conv3(ch_out, ch_out),
        )  # fmt: skip
        self.shortcut = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.shortcut(x)


class AttnLayer(nn.Module):
    """Single-head self-attention over the ``H * W`` positions of a GroupNormed map, plus
    the residual: ``[b, c, H, W] -> [b, c, H, W]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.norm = _norm(dim)
        self.attn = MultiHeadAttention(
            embed_dim=dim,
            num_heads=1,
            num_kv_heads=1,
            head_dim=dim,
            q_proj=nn.Linear(dim, dim),
            k_proj=nn.Linear(dim, dim),
            v_proj=nn.Linear(dim, dim),
            output_proj=nn.Linear(dim, dim),
            is_causal=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        out = self.attn(seq, seq)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2) + x


class Downsample(nn.Module):
    """Pad right / bottom by one, 3x3 conv of stride 2: ``[b, c, H, W] -> [b, c, H/2, W/2]``."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = _conv3(ch, ch, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv: ``[b, c, H, W] -> [b, c, 2H, 2W]``."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = _conv3(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def resnet_layers(n: int, ch_in: int, ch_out: int) -> nn.Sequential:
    """``n`` ResNet layers, the first changing ``ch_in`` to ``ch_out``."""
    return nn.Sequential(*(ResnetLayer(ch_in if i == 0 else ch_out, ch_out) for i in range(n)))


class DownBlock(nn.Module):
    """ResNet layers, then :class:`Downsample` (identity in the last block)."""

    def __init__(self, n_layers: int, ch_in: int, ch_out: int, downsample: bool):
        super().__init__()
        self.layers = resnet_layers(n_layers, ch_in, ch_out)
        self.downsample = Downsample(ch_out) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.layers(x))


class UpBlock(nn.Module):
    """ResNet layers, then :class:`Upsample` (identity in the last block)."""

    def __init__(self, n_layers: int, ch_in: int, ch_out: int, upsample: bool):
        super().__init__()
        self.layers = resnet_layers(n_layers, ch_in, ch_out)
        self.upsample = Upsample(ch_out) if upsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(self.layers(x))


def mid_block(ch: int) -> nn.Sequential:
    """ResNet layer, attention, ResNet layer at ``ch`` channels."""
    return nn.Sequential(ResnetLayer(ch, ch), AttnLayer(ch), ResnetLayer(ch, ch))


def end_block(ch_in: int, ch_out: int) -> nn.Sequential:
    """GroupNorm, SiLU, 3x3 conv to ``ch_out``."""
    return nn.Sequential(_norm(ch_in), nn.SiLU(), _conv3(ch_in, ch_out))


def diagonal_gaussian(z: Tensor) -> Tensor:
    """A sample of ``N(mean, exp(logvar))`` from ``z = [mean, logvar]`` along channels."""
    mean, logvar = torch.chunk(z, 2, dim=1)
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


class FluxEncoder(nn.Module):
    """Images -> ``scale_factor * (sample - shift_factor)`` latents.

    Args:
        ch_in: image channels.
        ch_z: latent channels.
        channels: output channels of each down block (all but the last downsample).
        n_layers_per_down_block: ResNet layers per block.
        scale_factor, shift_factor: the latent normalisation.
    """

    def __init__(
        self,
        ch_in: int,
        ch_z: int,
        channels: list[int],
        n_layers_per_down_block: int,
        scale_factor: float,
        shift_factor: float,
    ):
        super().__init__()
        self.scale_factor = scale_factor
        self.shift_factor = shift_factor
        self.conv_in = _conv3(ch_in, channels[0])
        self.down = nn.ModuleList(
            DownBlock(
                n_layers=n_layers_per_down_block,
                ch_in=channels[max(i - 1, 0)],
                ch_out=ch,
                downsample=i < len(channels) - 1,
            )
            for i, ch in enumerate(channels)
        )
        self.mid = mid_block(channels[-1])
        self.end = end_block(channels[-1], 2 * ch_z)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down:
            h = block(h)
        z = diagonal_gaussian(self.end(self.mid(h)))
        return self.scale_factor * (z - self.shift_factor)


class FluxDecoder(nn.Module):
    """Latents -> images (the latent normalisation undone first).

    Args:
        ch_out: image channels.
        ch_z: latent channels.
        channels: output channels of each up block (all but the last upsample).
        n_layers_per_up_block: ResNet layers per block.
        scale_factor, shift_factor: the latent normalisation.
    """

    def __init__(
        self,
        ch_out: int,
        ch_z: int,
        channels: list[int],
        n_layers_per_up_block: int,
        scale_factor: float,
        shift_factor: float,
    ):
        super().__init__()
        self.scale_factor = scale_factor
        self.shift_factor = shift_factor
        self.conv_in = _conv3(ch_z, channels[0])
        self.mid = mid_block(channels[0])
        self.up = nn.ModuleList(
            UpBlock(
                n_layers=n_layers_per_up_block,
                ch_in=channels[max(i - 1, 0)],
                ch_out=ch,
                upsample=i < len(channels) - 1,
            )
            for i, ch in enumerate(channels)
        )
        self.end = end_block(channels[-1], ch_out)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z / self.scale_factor + self.shift_factor))
        for block in self.up:
            h = block(h)
        return self.end(h)


class FluxAutoencoder(nn.Module):
    """``decode(encode(x))``; ``encode`` checks ``x [b, *img_shape]``.

    Raises:
        ValueError: an image whose ``[C, H, W]`` is not ``img_shape``.
    """

    def __init__(self, img_shape: tuple[int, int, int], encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self._img_shape = tuple(img_shape)
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def encode(self, x: Tensor) -> Tensor:
        """``[b, C, H, W] -> [b, ch_z, h, w]`` latents."""
        if tuple(x.shape[1:]) != self._img_shape:
            raise ValueError(
                f"images of shape {tuple(x.shape[1:])}, the autoencoder takes {self._img_shape}"
            )
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """``[b, ch_z, h, w] -> [b, C, H, W]`` images."""
        return self.decoder(z)
