"""Gemma 4's per-layer embeddings (PLE): a small extra input for every decoder layer.

The decoder computes one ``[b, s, L, p]`` tensor per forward (:class:`PerLayerEmbeddings`):
a token-identity part (a second embedding table ``[vocab, L * p]`` times ``sqrt(p)``) and a
context part (the scaled token embeddings projected ``[d] -> [L * p]`` times ``d ** -0.5``,
RMS-normed per layer), summed and times ``2 ** -0.5``. Layer ``i`` adds
:class:`PerLayerInputGate` of its slice ``[b, s, p]`` to the residual stream after its
feed-forward block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tunesmith.modules.feed_forward import ACTIVATIONS
from tunesmith.modules.norms import RMSNorm

__all__ = ["PerLayerEmbeddings", "PerLayerInputGate"]


class PerLayerEmbeddings(nn.Module):
    """The decoder-level half of PLE.

    Args:
        vocab_size: rows of the per-layer table (``vocab_size_per_layer_input``).
        num_layers: ``L``.
        dim: per-layer width ``p`` (``hidden_size_per_layer_input``).
        embed_dim: model width ``d``.
        eps: RMS norm epsilon.

    ``forward(tokens [b, s], h [b, s, d])`` (``h``: the scaled token embeddings) ->
    ``[b, s, L, p]``.
    """

    def __init__(self, vocab_size: int, num_layers: int, dim: int, embed_dim: int, eps: float):
        super().__init__()
        self.num_layers = num_layers
        self.dim = dim
        self.embeddings = nn.Embedding(vocab_size, num_layers * dim)
        self.proj = nn.Linear(embed_dim, num_layers * dim, bias=False)
        self.norm = RMSNorm(dim, eps=eps, scale_in_fp32=True)
        self.embed_dim = embed_dim

    def forward(self, tokens: Tensor, h: Tensor) -> Tensor:
        b, s = tokens.shape
        table = self.embeddings(tokens)
        token_part = table * float(torch.tensor(self.dim**0.5, dtype=table.dtype))
        context = self.proj(h) * self.embed_dim**-0.5
        context = self.norm(context.reshape(b, s, self.num_layers, self.dim))
        token_part = token_part.reshape(b, s, self.num_layers, self.dim)
        return (context + token_part) * 2.0**-0.5


class PerLayerInputGate(nn.Module):
    """The layer-level half of PLE: ``h + norm(proj(act(gate(h)) * per_layer_input))``.

    Shapes: ``h [b, s, d]``, ``per_layer_input [b, s, p]`` -> ``[b, s, d]``.
    """

    def __init__(self, embed_dim: int, dim: int, activation: str, eps: float):
        super().__init__()
        self.gate = nn.Linear(embed_dim, dim, bias=False)
        self.proj = nn.Linear(dim, embed_dim, bias=False)
        self.norm = RMSNorm(embed_dim, eps=eps, scale_in_fp32=True)
        self.activation = ACTIVATIONS[activation]

    def forward(self, h: Tensor, per_layer_input: Tensor) -> Tensor:
        gated = self.activation(self.gate(h)) * per_layer_input
        return h + self.norm(self.proj(gated))
