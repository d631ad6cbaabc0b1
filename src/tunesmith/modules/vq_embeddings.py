"""Vector-quantized embeddings (VQ-VAE codebook, https://arxiv.org/abs/1711.00937) with
torchtune 0.6.1's API (``torchtune.modules.VectorQuantizedEmbeddings``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VectorQuantizedEmbeddings"]


class VectorQuantizedEmbeddings(nn.Module):
    """A codebook ``embedding [num_embeddings, embedding_dim]`` (uninitialised: load or fill
    it); each input vector is replaced by its nearest code (squared Euclidean distance), with
    the straight-through estimator for gradients.

    ``forward(z [b, s, d]) -> (quantized [b, s, d], token_ids [b, s])``;
    ``decode(token_ids [...]) -> [..., d]``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, s, d = z.shape
        if d != self.embedding_dim:
            raise ValueError(
                f"Expected last dimension of input tensor ({d}) to be embedding size of "
                f"{self.embedding_dim}"
            )
        flat = z.reshape(-1, d)
        ids = torch.argmin(torch.cdist(flat, self.embedding, p=2.0) ** 2, dim=1)
        quantized = flat + (self.decode(ids) - flat).detach()
        return quantized.view(b, s, d), ids.view(b, s)

    def decode(self, token_ids: Tensor) -> Tensor:
        """The codes of ``token_ids``."""
        return F.embedding(token_ids, self.embedding)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"
