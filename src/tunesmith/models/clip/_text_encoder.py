"""CLIP's text encoder (OpenAI CLIP; transformers' ``CLIPTextModel``, torchtune's
``CLIPTextEncoder``): token + learned position embeddings, pre-norm causal self-attention
layers with QuickGELU MLPs, a final LayerNorm, and the hidden state of the end-of-text token
as the text's embedding."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["CLIPTextEncoder", "QuickGELU"]


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 * x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPTextEncoder(nn.Module):
    """Tokens ``[b, s]`` -> the final-normed hidden state at each row's first ``eot_token``
    ``[b, d]`` (position 0 when a row has none).

    Args:
        layer: one self-attention layer (causal), copied ``num_layers`` times (the copies
            start equal, as torchtune's builder makes them).
        final_norm: the norm after the last layer.
        vocab_size, max_seq_len, embed_dim, num_layers: sizes; ``s <= max_seq_len``.
        eot_token: the end-of-text id whose hidden state is returned (49407 in CLIP's vocab).

    Parameters: ``layers``, ``final_norm``, ``token_embedding [V, d]``,
    ``position_embedding [max_seq_len, d]`` (uninitialised: load a checkpoint).
    ``forward(tokens, mask=)``: ``mask [b, s, s]`` bool (True = attend) replaces the causal
    mask.
    """

    def __init__(
        self,
        *,
        layer: nn.Module,
        final_norm: nn.Module,
        vocab_size: int = 49408,
        max_seq_len: int = 77,
        embed_dim: int = 768,
        num_layers: int = 12,
        eot_token: int = 49407,
    ):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.final_norm = final_norm
        self.max_seq_len = max_seq_len
        self.eot_token = eot_token
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Parameter(torch.empty(max_seq_len, embed_dim))

    def forward(self, tokens: Tensor, *, mask: Tensor | None = None) -> Tensor:
        """``tokens [b, s]`` -> ``[b, d]``.

        Raises:
            ValueError: ``s`` is beyond ``max_seq_len``.
        """
        seq_len = tokens.shape[1]
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"seq_len ({seq_len}) of input tensor should be smaller than max_seq_len "
                f"({self.max_seq_len})"
            )
        x = self.token_embedding(tokens) + self.position_embedding[:seq_len]
        for layer in self.layers:
            x = layer(x, mask=mask)
        x = self.final_norm(x)
        eot = (tokens == self.eot_token).int().argmax(dim=-1)  # first end-of-text, else 0
        return x.take_along_dim(eot.view(-1, 1, 1), dim=1).squeeze(1)
