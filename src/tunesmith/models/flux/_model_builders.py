"""Flux model builders with torchtune's names."""

from __future__ import annotations

from collections.abc import Sequence

from tunesmith.models.flux._autoencoder import FluxAutoencoder, FluxDecoder, FluxEncoder

__all__ = ["flux_1_autoencoder"]


def flux_1_autoencoder(
    resolution: int = 256,
    ch_in: int = 3,
    ch_out: int = 3,
    ch_base: int = 128,
    ch_mults: Sequence[int] = (1, 2, 4, 4),
    ch_z: int = 16,
    n_layers_per_resample_block: int = 2,
    scale_factor: float = 0.3611,
    shift_factor: float = 0.1159,
) -> FluxAutoencoder:
    """The image autoencoder of every FLUX.1 model (dev, schnell, Canny / Depth / Fill):
    down blocks of ``ch_base * ch_mults[i]`` channels with ``n_layers_per_resample_block``
    ResNet layers, up blocks mirroring them with one layer more, ``ch_z`` latent channels,
    for square images of ``resolution`` pixels."""
    channels = [ch_base * m for m in ch_mults]
    encoder = FluxEncoder(
        ch_in=ch_in,
        ch_z=ch_z,
        channels=channels,
        n_layers_per_down_block=n_layers_per_resample_block,
        scale_factor=scale_factor,
        shift_factor=shift_factor,
    )
    decoder = FluxDecoder(
        ch_out=ch_out,
        ch_z=ch_z,
        channels=channels[::-1],
        n_layers_per_up_block=n_layers_per_resample_block + 1,
        scale_factor=scale_factor,
        shift_factor=shift_factor,
    )
    return FluxAutoencoder(
        img_shape=(ch_in, resolution, resolution), encoder=encoder, decoder=decoder
    )
