"""torchtune's family classifier builders (``llama2_classifier``, ``mistral_classifier`` and
their LoRA forms): the family decoder with a ``[d] -> [num_classes]`` head."""

from __future__ import annotations

from collections.abc import Sequence

from tunesmith.models.builder import build_decoder, lora_settings
from tunesmith.models.spec import ModelSpec
from tunesmith.modules import TransformerDecoder
from tunesmith.modules.feed_forward import scale_hidden_dim_for_mlp

__all__ = [
    "llama2_classifier",
    "lora_llama2_classifier",
    "lora_mistral_classifier",
    "mistral_classifier",
]


def _llama2_hidden_dim(embed_dim: int) -> int:
    """torchtune's Llama 2 MLP width for ``embed_dim`` (``scale_hidden_dim_for_mlp``)."""
    return scale_hidden_dim_for_mlp(embed_dim)


def _spec(family: str, num_classes: int, **kw: object) -> ModelSpec:
    kw.pop("attn_dropout", None)  # dropout is 0 at inference and in tunesmith's attention
    kw["num_kv_heads"] = kw.get("num_kv_heads") or kw["num_heads"]
    return ModelSpec(family=family, num_classes=int(num_classes), **kw)  # type: ignore[arg-type]


def llama2_classifier(
    num_classes: int,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    intermediate_dim: int | None = None,
    norm_eps: float = 1e-5,
) -> TransformerDecoder:
    """A Llama 2 decoder whose output is ``Linear(embed_dim, num_classes, bias=False)``."""
    return build_decoder(
        _spec("LLAMA2", num_classes, vocab_size=vocab_size, num_layers=num_layers,
              num_heads=num_heads, num_kv_heads=num_kv_heads, embed_dim=embed_dim,
              max_seq_len=max_seq_len, norm_eps=norm_eps,
              intermediate_dim=intermediate_dim or _llama2_hidden_dim(embed_dim))
    )  # fmt: skip


def mistral_classifier(
    num_classes: int,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: int = 10_000,
) -> TransformerDecoder:
    """A Mistral decoder whose output is ``Linear(embed_dim, num_classes, bias=False)``."""
    return build_decoder(
        _spec("MISTRAL", num_classes, vocab_size=vocab_size, num_layers=num_layers,
              num_heads=num_heads, num_kv_heads=num_kv_heads, embed_dim=embed_dim,
              intermediate_dim=intermediate_dim, max_seq_len=max_seq_len, norm_eps=norm_eps,
              rope_base=float(rope_base))
    )  # fmt: skip


def lora_llama2_classifier(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    num_classes: int,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: int | None = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """:func:`llama2_classifier` with LoRA / DoRA adapters (torchtune's arguments)."""
    spec = _spec("LLAMA2", num_classes, vocab_size=vocab_size, num_layers=num_layers,
                 num_heads=num_heads, num_kv_heads=num_kv_heads, embed_dim=embed_dim,
                 max_seq_len=max_seq_len, norm_eps=norm_eps,
                 intermediate_dim=intermediate_dim or _llama2_hidden_dim(embed_dim))  # fmt: skip
    lora = lora_settings(lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, lora_rank,
                         lora_alpha, lora_dropout, use_dora, quantize_base)  # fmt: skip
    return build_decoder(spec, lora)


def lora_mistral_classifier(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    num_classes: int,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: int = 10_000,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """:func:`mistral_classifier` with LoRA / DoRA adapters (torchtune's arguments)."""
    spec = _spec("MISTRAL", num_classes, vocab_size=vocab_size, num_layers=num_layers,
                 num_heads=num_heads, num_kv_heads=num_kv_heads, embed_dim=embed_dim,
                 intermediate_dim=intermediate_dim, max_seq_len=max_seq_len, norm_eps=norm_eps,
                 rope_base=float(rope_base))  # fmt: skip
    lora = lora_settings(lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, lora_rank,
                         lora_alpha, lora_dropout, use_dora, quantize_base)  # fmt: skip
    return build_decoder(spec, lora)
