"""torchtune 0.6.1's per-layer component builders (``torchtune.models.<family>.
_component_builders``): one attention block or MLP with torchtune's signatures, for code that
assembles its own layers.

The attention blocks carry their RoPE module (``pos_embeddings``, torchtune's layout per
family: interleaved pairs for Llama, rotated halves for Qwen2 / Phi-3) and are called
torchtune's way, ``attn(x, y, mask=, input_pos=)`` (see
:class:`~tunesmith.modules.MultiHeadAttention`). Whole models come from the family builders
(``qwen2(...)``, ``lora_phi3(...)``), which tunesmith builds from a spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from tunesmith.modules.attention import MultiHeadAttention
from tunesmith.modules.feed_forward import FeedForward
from tunesmith.modules.low_precision import FrozenNF4Linear
from tunesmith.modules.peft import LORA_ATTN_MODULES, DoRALinear, LoRALinear
from tunesmith.modules.position_embeddings import (
    Phi3RotaryPositionalEmbeddings,
    Qwen2RotaryPositionalEmbeddings,
    RotaryPositionalEmbeddings,
)

__all__ = [
    "llama3_mlp",
    "lora_llama2_mlp",
    "lora_llama2_self_attention",
    "lora_llama3_mlp",
    "lora_llama3_self_attention",
    "lora_mistral_mlp",
    "lora_mistral_self_attention",
    "lora_phi3_mlp",
    "lora_phi3_self_attention",
    "lora_qwen2_mlp",
    "lora_qwen2_self_attention",
    "mistral_mlp",
    "phi3_mlp",
    "qwen2_mlp",
]

_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "output_proj")


def _linear(
    in_dim: int,
    out_dim: int,
    *,
    bias: bool,
    lora: bool,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float,
    use_dora: bool,
    quantize_base: bool,
) -> nn.Module:
    """A LoRA / DoRA projection when ``lora``, else a plain (or frozen NF4) linear."""
    if lora:
        cls = DoRALinear if use_dora else LoRALinear
        return cls(
            in_dim,
            out_dim,
            rank=lora_rank,
            alpha=lora_alpha,
            dropout=lora_dropout,
            use_bias=bias,
            quantize_base=quantize_base,
        )
    if quantize_base:
        return FrozenNF4Linear(in_dim, out_dim, bias=bias)
    return nn.Linear(in_dim, out_dim, bias=bias)


def _lora_self_attention(
    lora_modules: Sequence[LORA_ATTN_MODULES],
    *,
    embed_dim: int,
    num_heads: int,
    num_kv_heads: int | None,
    max_seq_len: int,
    rope: Callable[[int], nn.Module],
    qkv_bias: bool,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float,
    use_dora: bool,
    quantize_base: bool,
) -> MultiHeadAttention:
    """Grouped-query attention with LoRA on ``lora_modules``; ``rope(head_dim)`` its RoPE."""
    if not lora_modules:
        raise ValueError(f"Must pass one or more of {list(_ATTN_MODULES)} as lora_modules")
    unknown = sorted(set(lora_modules) - set(_ATTN_MODULES))
    if unknown:
        raise ValueError(f"lora_modules {unknown} unknown; choose from {list(_ATTN_MODULES)}")
    head_dim = embed_dim // num_heads
    num_kv_heads = num_kv_heads or num_heads
    lora = {
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "use_dora": use_dora,
        "quantize_base": quantize_base,
    }
    q, kv = num_heads * head_dim, num_kv_heads * head_dim
    return MultiHeadAttention(
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        q_proj=_linear(embed_dim, q, bias=qkv_bias, lora="q_proj" in lora_modules, **lora),
        k_proj=_linear(embed_dim, kv, bias=qkv_bias, lora="k_proj" in lora_modules, **lora),
        v_proj=_linear(embed_dim, kv, bias=qkv_bias, lora="v_proj" in lora_modules, **lora),
        output_proj=_linear(
            embed_dim, embed_dim, bias=False, lora="output_proj" in lora_modules, **lora
        ),
        pos_embeddings=rope(head_dim),
        max_seq_len=max_seq_len,
    )


def lora_llama2_self_attention(
    lora_modules: Sequence[LORA_ATTN_MODULES],
    *,
    embed_dim: int,
    num_heads: int,
    num_kv_heads: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> MultiHeadAttention:
    """Llama 2 attention with LoRA (or DoRA) on ``lora_modules``; interleaved RoPE, base 1e4.
    ``attn_dropout`` is accepted and ignored (see the differences table)."""
    return _lora_self_attention(
        lora_modules, embed_dim=embed_dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
        max_seq_len=max_seq_len, qkv_bias=False, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, use_dora=use_dora, quantize_base=quantize_base,
        rope=lambda d: RotaryPositionalEmbeddings(d, max_seq_len=max_seq_len),
    )  # fmt: skip


def lora_llama3_self_attention(
    lora_modules: Sequence[LORA_ATTN_MODULES],
    *,
    embed_dim: int,
    num_heads: int,
    num_kv_heads: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    rope_base: int = 500_000,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> MultiHeadAttention:
    """Llama 3 attention with LoRA (or DoRA); interleaved RoPE at ``rope_base``."""
    return _lora_self_attention(
        lora_modules, embed_dim=embed_dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
        max_seq_len=max_seq_len, qkv_bias=False, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, use_dora=use_dora, quantize_base=quantize_base,
        rope=lambda d: RotaryPositionalEmbeddings(d, max_seq_len=max_seq_len, base=rope_base),
    )  # fmt: skip


def lora_mistral_self_attention(
    lora_modules: Sequence[LORA_ATTN_MODULES],
    *,
    embed_dim: int,
    num_heads: int,
    num_kv_heads: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    rope_base: int = 10_000,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> MultiHeadAttention:
    """Mistral attention with LoRA (or DoRA); interleaved RoPE at ``rope_base``."""
    return _lora_self_attention(
        lora_modules, embed_dim=embed_dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
        max_seq_len=max_seq_len, qkv_bias=False, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, use_dora=use_dora, quantize_base=quantize_base,
        rope=lambda d: RotaryPositionalEmbeddings(d, max_seq_len=max_seq_len, base=rope_base),
    )  # fmt: skip


def lora_qwen2_self_attention(
    lora_modules: Sequence[LORA_ATTN_MODULES],
    *,
    embed_dim: int,
    num_heads: int,
    num_kv_heads: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    rope_base: float = 1_000_000.0,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> MultiHeadAttention:
    """Qwen2 attention with LoRA (or DoRA): q/k/v with biases, RoPE on halves at
    ``rope_base``."""
    return _lora_self_attention(
        lora_modules, embed_dim=embed_dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
        max_seq_len=max_seq_len, qkv_bias=True, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, use_dora=use_dora, quantize_base=quantize_base,
        rope=lambda d: Qwen2RotaryPositionalEmbeddings(d, max_seq_len=max_seq_len, base=rope_base),
    )  # fmt: skip


def lora_phi3_self_attention(
    lora_modules: Sequence[LORA_ATTN_MODULES],
    *,
    embed_dim: int,
    num_heads: int,
    num_kv_heads: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    rope_base: int = 10_000,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> MultiHeadAttention:
    """Phi-3 attention with LoRA (or DoRA); RoPE on halves at ``rope_base``."""
    return _lora_self_attention(
        lora_modules, embed_dim=embed_dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
        max_seq_len=max_seq_len, qkv_bias=False, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, use_dora=use_dora, quantize_base=quantize_base,
        rope=lambda d: Phi3RotaryPositionalEmbeddings(d, max_seq_len=max_seq_len, base=rope_base),
    )  # fmt: skip


def _swiglu(dim: int, hidden_dim: int, quantize_base: bool) -> FeedForward:
    linear = FrozenNF4Linear if quantize_base else nn.Linear
    return FeedForward(
        gate_proj=linear(dim, hidden_dim, bias=False),
        down_proj=linear(hidden_dim, dim, bias=False),
        up_proj=linear(dim, hidden_dim, bias=False),
    )


def _lora_swiglu(
    dim: int,
    hidden_dim: int,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float,
    quantize_base: bool,
    use_dora: bool,
) -> FeedForward:
    lora = {
        "bias": False,
        "lora": True,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "use_dora": use_dora,
        "quantize_base": quantize_base,
    }
    return FeedForward(
        gate_proj=_linear(dim, hidden_dim, **lora),
        down_proj=_linear(hidden_dim, dim, **lora),
        up_proj=_linear(dim, hidden_dim, **lora),
    )


def llama3_mlp(dim: int, hidden_dim: int, quantize_base: bool = False) -> FeedForward:
    """SwiGLU MLP ``[dim] -> [hidden_dim] -> [dim]``, no biases (frozen NF4 when
    ``quantize_base``); the same block serves Llama 3, Mistral, Qwen2 and Phi-3."""
    return _swiglu(dim, hidden_dim, quantize_base)


def mistral_mlp(dim: int, hidden_dim: int, quantize_base: bool = False) -> FeedForward:
    """Mistral's MLP (see :func:`llama3_mlp`)."""
    return _swiglu(dim, hidden_dim, quantize_base)


def qwen2_mlp(dim: int, hidden_dim: int, quantize_base: bool = False) -> FeedForward:
    """Qwen2's MLP (see :func:`llama3_mlp`)."""
    return _swiglu(dim, hidden_dim, quantize_base)


def phi3_mlp(dim: int, hidden_dim: int, quantize_base: bool = False) -> FeedForward:
    """Phi-3's MLP (see :func:`llama3_mlp`)."""
    return _swiglu(dim, hidden_dim, quantize_base)


def lora_llama2_mlp(
    *,
    dim: int,
    hidden_dim: int,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    quantize_base: bool = False,
    use_dora: bool = False,
) -> FeedForward:
    """SwiGLU MLP with LoRA (or DoRA) on its three projections."""
    return _lora_swiglu(
        dim, hidden_dim, lora_rank, lora_alpha, lora_dropout, quantize_base, use_dora
    )


lora_llama3_mlp = lora_llama2_mlp
lora_mistral_mlp = lora_llama2_mlp
lora_qwen2_mlp = lora_llama2_mlp
lora_phi3_mlp = lora_llama2_mlp
