"""CLIP component builders with torchtune's signatures: the text encoder and the CLIP MLP."""

from __future__ import annotations

from typing import Any

from torch import nn

from tunesmith.models.clip._text_encoder import CLIPTextEncoder, QuickGELU
from tunesmith.modules.attention import MultiHeadAttention
from tunesmith.modules.feed_forward import FeedForward
from tunesmith.modules.low_precision import FrozenNF4Linear
from tunesmith.modules.transformer import TransformerSelfAttentionLayer

__all__ = ["clip_mlp", "clip_text_encoder"]


def clip_text_encoder(
    embed_dim: int,
    num_heads: int,
    num_layers: int,
    vocab_size: int = 49408,
    max_seq_len: int = 77,
    norm_eps: float = 1e-5,
) -> CLIPTextEncoder:
    """CLIP's text encoder (https://arxiv.org/abs/2103.00020): ``num_layers`` pre-LayerNorm
    causal self-attention layers of width ``embed_dim`` (``num_heads`` heads, biased
    projections, a ``4 * embed_dim`` QuickGELU MLP) and a final LayerNorm.

    Raises:
        ValueError: ``embed_dim`` is not a multiple of ``num_heads``.
    """
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
    attn = MultiHeadAttention(
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=embed_dim // num_heads,
        q_proj=nn.Linear(embed_dim, embed_dim),
        k_proj=nn.Linear(embed_dim, embed_dim),
        v_proj=nn.Linear(embed_dim, embed_dim),
        output_proj=nn.Linear(embed_dim, embed_dim),
        is_causal=True,
    )
    mlp = clip_mlp(
        in_dim=embed_dim, out_dim=embed_dim, hidden_dim=4 * embed_dim, activation=QuickGELU()
    )
    layer = TransformerSelfAttentionLayer(
        attn=attn,
        mlp=mlp,
        sa_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
        mlp_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
    )
    return CLIPTextEncoder(
        layer=layer,
        final_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        embed_dim=embed_dim,
        num_layers=num_layers,
    )


def clip_mlp(
    in_dim: int,
    out_dim: int,
    hidden_dim: int,
    activation: nn.Module,
    quantize_base: bool = False,
    **quantization_kwargs: Any,
) -> FeedForward:
    """CLIP's MLP ``down(act(gate(x)))``, both projections biased (NF4-frozen with
    ``quantize_base``). ``x [..., in_dim] -> [..., out_dim]``."""

    def linear(i: int, o: int) -> nn.Module:
        if quantize_base:
            return FrozenNF4Linear(i, o, bias=True, **quantization_kwargs)
        return nn.Linear(i, o)

    return FeedForward(
        gate_proj=linear(in_dim, hidden_dim),
        down_proj=linear(hidden_dim, out_dim),
        up_proj=None,
        activation=activation,
    )
