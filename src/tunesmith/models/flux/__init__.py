"""Flux (FLUX.1) with torchtune's API: the image autoencoder."""

from tunesmith.models.flux._autoencoder import FluxAutoencoder, FluxDecoder, FluxEncoder
from tunesmith.models.flux._model_builders import flux_1_autoencoder

__all__ = ["FluxAutoencoder", "FluxDecoder", "FluxEncoder", "flux_1_autoencoder"]
