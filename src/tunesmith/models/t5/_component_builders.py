"""The T5 encoder builder with torchtune's signature."""

from __future__ import annotations

from torch import nn

from tunesmith.models.t5._encoder import T5Encoder, T5EncoderLayer, T5EncoderSelfAttention
from tunesmith.modules.feed_forward import FeedForward
from tunesmith.modules.norms import RMSNorm

__all__ = ["t5_encoder"]


def t5_encoder(
    embed_dim: int,
    mlp_dim: int,
    num_heads: int,
    head_dim: int,
    num_layers: int,
    rel_pos_num_buckets: int,
    rel_pos_max_dist: int,
    vocab_size: int,
    norm_eps: float,
    max_seq_len: int,
) -> T5Encoder:
    """A T5 (v1.1) encoder: ``num_layers`` layers of bias-free self-attention and a gated
    GELU MLP ``w2(gelu(w1 x) * w3 x)`` (torchtune's exact GELU; T5 v1.1 checkpoints were
    trained with the tanh approximation), RMSNorms (``norm_eps``), relative position buckets
    shared by all layers."""
    token_embedding = nn.Embedding(vocab_size, embed_dim)
    layers = nn.ModuleList()
    for _ in range(num_layers):
        attn = T5EncoderSelfAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            head_dim=head_dim,
            q_proj=nn.Linear(embed_dim, embed_dim, bias=False),
            k_proj=nn.Linear(embed_dim, embed_dim, bias=False),
            v_proj=nn.Linear(embed_dim, embed_dim, bias=False),
            output_proj=nn.Linear(embed_dim, embed_dim, bias=False),
        )
        mlp = FeedForward(
            gate_proj=nn.Linear(embed_dim, mlp_dim, bias=False),
            down_proj=nn.Linear(mlp_dim, embed_dim, bias=False),
            up_proj=nn.Linear(embed_dim, mlp_dim, bias=False),
            activation=nn.GELU(),
        )
        layers.append(
            T5EncoderLayer(
                attn=attn,
                mlp=mlp,
                sa_norm=RMSNorm(embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(embed_dim, eps=norm_eps),
            )
        )
    return T5Encoder(
        token_embedding=token_embedding,
        layers=layers,
        final_norm=RMSNorm(embed_dim, eps=norm_eps),
        num_heads=num_heads,
        rel_pos_num_buckets=rel_pos_num_buckets,
        rel_pos_max_dist=rel_pos_max_dist,
        max_seq_len=max_seq_len,
    )
