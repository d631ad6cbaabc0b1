"""The T5 encoder (https://arxiv.org/abs/1910.10683; transformers' ``T5EncoderModel``,
torchtune's ``T5Encoder``): pre-RMSNorm self-attention layers without softmax scaling, whose
scores get a learned bias per head and bucket of relative position, gated-GELU MLPs, and a
final RMSNorm. Shapes: ``b`` batch, ``s`` tokens, ``d`` width, ``h`` heads."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "T5Encoder",
    "T5EncoderLayer",
    "T5EncoderRelativePositionBias",
    "T5EncoderSelfAttention",
]


class T5Encoder(nn.Module):
    """``tokens [b, s]`` (``s <= max_seq_len``) -> ``[b, s, d]``.

    Args:
        token_embedding: ``nn.Embedding(V, d)``.
        layers: the layers, or one layer copied ``num_layers`` times.
        final_norm: the norm after the last layer.
        num_heads, rel_pos_num_buckets, rel_pos_max_dist, max_seq_len: sizes of the shared
            :class:`T5EncoderRelativePositionBias`.
        num_layers: only with a single ``layers`` module.

    Raises:
        AssertionError: ``num_layers`` missing for a single layer module (torchtune's error).
    """

    def __init__(
        self,
        *,
        token_embedding: nn.Embedding,
        layers: nn.Module | list[nn.Module] | nn.ModuleList,
        final_norm: nn.Module,
        num_heads: int,
        rel_pos_num_buckets: int,
        rel_pos_max_dist: int,
        max_seq_len: int,
        num_layers: int | None = None,
    ) -> None:
        super().__init__()
        self.token_embedding = token_embedding
        self.final_norm = final_norm
        self.max_seq_len = max_seq_len
        self.relative_position_bias = T5EncoderRelativePositionBias(
            num_buckets=rel_pos_num_buckets,
            max_dist=rel_pos_max_dist,
            num_heads=num_heads,
            max_seq_len=max_seq_len,
        )
        if isinstance(layers, nn.ModuleList):
            self.layers = layers
        elif isinstance(layers, list):
            self.layers = nn.ModuleList(layers)
        else:
            if num_layers is None:
                raise AssertionError("num_layers is not defined, layers must be a list")
            self.layers = nn.ModuleList(copy.deepcopy(layers) for _ in range(num_layers))

    def forward(self, tokens: Tensor) -> Tensor:
        """Raises ``ValueError`` when ``s > max_seq_len``."""
        seq_len = tokens.shape[1]
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"seq_len ({seq_len}) of input tensor should be smaller than max_seq_len "
                f"({self.max_seq_len})"
            )
        x = self.token_embedding(tokens)
        bias = self.relative_position_bias()[:, :, :seq_len, :seq_len]
        for layer in self.layers:
            x = layer(x, bias)
        return self.final_norm(x)


class T5EncoderLayer(nn.Module):
    """``x + attn(sa_norm(x), bias)``, then ``+ mlp(mlp_norm(.))``; ``x [b, s, d]``,
    ``bias [1, h, s, s]``."""

    def __init__(
        self, attn: nn.Module, mlp: nn.Module, sa_norm: nn.Module, mlp_norm: nn.Module
    ) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp
        self.sa_norm = sa_norm
        self.mlp_norm = mlp_norm

    def forward(self, x: Tensor, rel_pos_bias: Tensor) -> Tensor:
        x = x + self.attn(self.sa_norm(x), rel_pos_bias)
        return x + self.mlp(self.mlp_norm(x))


class T5EncoderSelfAttention(nn.Module):
    """``softmax(q k^T + bias) v`` per head, no ``1 / sqrt(hd)`` scaling (T5 folds it into
    the initialisation); the softmax runs in fp32. ``x [b, s, d]``, ``bias [1, h, s, s]``.

    Raises:
        ValueError: ``embed_dim`` is not ``num_heads * head_dim``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        output_proj: nn.Module,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        if embed_dim // num_heads != head_dim:
            raise ValueError(f"head_dim ({head_dim}) must be equal to embed_dim // num_heads")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.output_proj = output_proj

    def forward(self, x: Tensor, rel_pos_bias: Tensor) -> Tensor:
        b, s, d = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) + rel_pos_bias
        weights = F.softmax(scores.float(), dim=-1).to(scores.dtype)
        return self.output_proj((weights @ v).transpose(1, 2).reshape(b, s, d))


class T5EncoderRelativePositionBias(nn.Module):
    """Learned bias per head and relative-position bucket (bidirectional: half the buckets
    for keys after the query). ``embedding [num_buckets, h]``; ``forward() -> [1, h,
    max_seq_len, max_seq_len]``."""

    def __init__(self, num_buckets: int, max_dist: int, num_heads: int, max_seq_len: int):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embedding = nn.Embedding(num_buckets, num_heads)
        self.register_buffer(
            "relative_position_to_bucket",
            relative_position_buckets(num_buckets, max_dist, max_seq_len),
            persistent=False,
        )

    def forward(self) -> Tensor:
        return self.embedding(self.relative_position_to_bucket).permute(2, 0, 1).unsqueeze(0)


def relative_position_buckets(num_buckets: int, max_dist: int, max_seq_len: int) -> Tensor:
    """``[s, s]`` bucket of key ``j`` relative to query ``i`` (T5's bidirectional rule): keys
    after the query use the upper half of the buckets; within a half, distances below a
    quarter of the buckets are exact, longer ones log-spaced up to ``max_dist`` and clamped
    to the half's last bucket."""
    pos = torch.arange(max_seq_len, dtype=torch.long)
    rel = pos[None, :] - pos[:, None]
    dist = rel.abs()
    half = num_buckets // 2
    exact = half // 2
    far = exact + (
        torch.log(dist.float() / exact) / math.log(max_dist / exact) * (half - exact)
    ).to(torch.long)
    far = far.clamp(max=half - 1)
    return (rel > 0).long() * half + torch.where(dist < exact, dist, far)
