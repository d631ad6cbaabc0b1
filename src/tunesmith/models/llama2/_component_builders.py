"""torchtune's generic Llama 2 component builder (every size given as arguments), used by
configs that build a model of their own shape, e.g. torchtune's PPO configs."""

from torch import nn

from tunesmith.models._classifiers import _llama2_hidden_dim
from tunesmith.models.builder import build_decoder
from tunesmith.models.spec import ModelSpec
from tunesmith.modules.feed_forward import FeedForward, scale_hidden_dim_for_mlp
from tunesmith.modules.low_precision import FrozenNF4Linear
from tunesmith.modules.transformer import TransformerDecoder

__all__ = ["llama2", "llama2_mlp", "scale_hidden_dim_for_mlp"]


def llama2_mlp(dim: int, hidden_dim: int, quantize_base: bool = False) -> FeedForward:
    """Llama's SwiGLU MLP ``[dim] -> [hidden_dim] -> [dim]``, no biases; ``quantize_base``
    builds the three projections as frozen NF4 (QLoRA base)."""
    linear = FrozenNF4Linear if quantize_base else nn.Linear
    return FeedForward(
        gate_proj=linear(dim, hidden_dim, bias=False),
        down_proj=linear(hidden_dim, dim, bias=False),
        up_proj=linear(dim, hidden_dim, bias=False),
    )


def llama2(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int | None,
    embed_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    intermediate_dim: int | None = None,
    norm_eps: float = 1e-5,
) -> TransformerDecoder:
    """A Llama 2 language model (``torchtune.models.llama2.llama2``); ``intermediate_dim`` None
    gives torchtune's 2/3 x 4 x ``embed_dim`` rounded up to 256; dropout is always 0."""
    del attn_dropout
    spec = ModelSpec(family="LLAMA2", vocab_size=vocab_size, num_layers=num_layers,
                     num_heads=num_heads, num_kv_heads=num_kv_heads or num_heads,
                     embed_dim=embed_dim, max_seq_len=max_seq_len, norm_eps=norm_eps,
                     intermediate_dim=intermediate_dim or _llama2_hidden_dim(embed_dim))  # fmt: skip
    return build_decoder(spec)
