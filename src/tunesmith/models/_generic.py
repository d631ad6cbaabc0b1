"""torchtune's generic component builders (every size given as arguments): ``llama3(...)``,
``lora_qwen2(...)``, ``phi3(...)``, ... with torchtune 0.6.1's signatures.

Each builds a :class:`ModelSpec` from its arguments and calls :func:`build_decoder`, the
same path as the fixed sizes (``llama3_2_1b``); ``lora_<family>`` adds
:func:`lora_settings`. Dropout arguments are accepted and ignored: tunesmith's decoders
train without attention dropout (torchtune's default is 0 too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.models._classifiers import _llama2_hidden_dim
from tunesmith.models.builder import build_decoder, lora_settings
from tunesmith.models.spec import ModelSpec
from tunesmith.modules.rope import RopeScaling
from tunesmith.modules.transformer import TransformerDecoder

__all__ = [
    "gemma",
    "llama3",
    "llama3_1",
    "llama3_2",
    "lora_gemma",
    "lora_llama2",
    "lora_llama3",
    "lora_llama3_1",
    "lora_llama3_2",
    "lora_mistral",
    "lora_phi3",
    "lora_qwen2",
    "mistral",
    "phi3",
    "qwen2",
]


def _decoder(lora: dict[str, Any] | None, **fields: Any) -> TransformerDecoder:
    spec = ModelSpec(**fields)
    return build_decoder(spec, lora_settings(**lora) if lora is not None else None)


def _lora_args(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool,
    apply_lora_to_output: bool,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float,
    use_dora: bool,
    quantize_base: bool,
) -> dict[str, Any]:
    return dict(
        lora_attn_modules=lora_attn_modules,
        apply_lora_to_mlp=apply_lora_to_mlp,
        apply_lora_to_output=apply_lora_to_output,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        use_dora=use_dora,
        quantize_base=quantize_base,
    )


def _llama_fields(
    family: str,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int | None,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: int | None,
    norm_eps: float,
    rope_base: float,
    scaling: RopeScaling | None = None,
    tie: bool = False,
) -> dict[str, Any]:
    return dict(
        family=family,
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads or num_heads,
        embed_dim=embed_dim,
        max_seq_len=max_seq_len,
        intermediate_dim=intermediate_dim or _llama2_hidden_dim(embed_dim),
        norm_eps=norm_eps,
        rope_base=rope_base,
        rope_scaling=scaling,
        tie_embeddings=tie,
    )


def _scaling(scale_factor: float) -> RopeScaling:
    return RopeScaling(factor=float(scale_factor), low_freq_factor=1.0, high_freq_factor=4.0)


def llama3(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    rope_base: int = 500_000,
    intermediate_dim: int | None = None,
    norm_eps: float = 1e-5,
) -> TransformerDecoder:
    """A Llama 3 decoder of any shape (``torchtune.models.llama3.llama3``)."""
    return _decoder(None, **_llama_fields("LLAMA3", vocab_size, num_layers, num_heads,
                                          num_kv_heads, embed_dim, max_seq_len,
                                          intermediate_dim, norm_eps, rope_base))  # fmt: skip


def llama3_1(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    rope_base: int = 500_000,
    intermediate_dim: int | None = None,
    norm_eps: float = 1e-5,
    scale_factor: int = 8,
) -> TransformerDecoder:
    """A Llama 3.1 decoder (Llama 3 with ``scale_factor`` RoPE scaling)."""
    return _decoder(None, **_llama_fields("LLAMA3", vocab_size, num_layers, num_heads,
                                          num_kv_heads, embed_dim, max_seq_len, intermediate_dim,
                                          norm_eps, rope_base, _scaling(scale_factor)))  # fmt: skip


def llama3_2(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    rope_base: int = 500_000,
    intermediate_dim: int | None = None,
    norm_eps: float = 1e-5,
    scale_factor: int = 32,
    tie_word_embeddings: bool = True,
) -> TransformerDecoder:
    """A Llama 3.2 text decoder (scaled RoPE, tied embeddings by default)."""
    return _decoder(None, **_llama_fields("LLAMA3_2", vocab_size, num_layers, num_heads,
                                          num_kv_heads, embed_dim, max_seq_len, intermediate_dim,
                                          norm_eps, rope_base, _scaling(scale_factor),
                                          tie_word_embeddings))  # fmt: skip


def lora_llama2(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
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
    """A Llama 2 decoder of any shape with LoRA / DoRA adapters."""
    lora = _lora_args(lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, lora_rank,
                      lora_alpha, lora_dropout, use_dora, quantize_base)  # fmt: skip
    return _decoder(lora, **_llama_fields("LLAMA2", vocab_size, num_layers, num_heads,
                                          num_kv_heads, embed_dim, max_seq_len,
                                          intermediate_dim, norm_eps, 10_000.0))  # fmt: skip


def _lora_llama3_like(
    family: str, scaling: RopeScaling | None, tie: bool, kw: dict[str, Any]
) -> TransformerDecoder:
    lora = _lora_args(*(kw.pop(k) for k in (
        "lora_attn_modules", "apply_lora_to_mlp", "apply_lora_to_output", "lora_rank",
        "lora_alpha", "lora_dropout", "use_dora", "quantize_base")))  # fmt: skip
    kw.pop("attn_dropout", None)
    return _decoder(lora, **_llama_fields(family, kw["vocab_size"], kw["num_layers"],
                                          kw["num_heads"], kw["num_kv_heads"], kw["embed_dim"],
                                          kw["max_seq_len"], kw["intermediate_dim"],
                                          kw["norm_eps"], kw["rope_base"], scaling, tie))  # fmt: skip


def lora_llama3(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: int | None = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000.0,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """A Llama 3 decoder of any shape with LoRA / DoRA adapters."""
    return _lora_llama3_like("LLAMA3", None, False, dict(locals()))


def lora_llama3_1(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: int | None = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000.0,
    scale_factor: int = 8,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """A Llama 3.1 decoder of any shape with LoRA / DoRA adapters."""
    kw = dict(locals())
    return _lora_llama3_like("LLAMA3", _scaling(kw.pop("scale_factor")), False, kw)


def lora_llama3_2(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: int | None = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000.0,
    scale_factor: int = 32,
    tie_word_embeddings: bool = True,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """A Llama 3.2 text decoder of any shape with LoRA / DoRA adapters."""
    kw = dict(locals())
    scaling, tie = _scaling(kw.pop("scale_factor")), kw.pop("tie_word_embeddings")
    return _lora_llama3_like("LLAMA3_2", scaling, tie, kw)


def _qwen2_fields(kw: dict[str, Any]) -> dict[str, Any]:
    if kw.get("q_norm") is not None or kw.get("k_norm") is not None:
        raise ValueError("qwen2(q_norm=..., k_norm=...): use tunesmith.models.qwen3 for q/k norms")
    biases = {kw["q_proj_bias"], kw["k_proj_bias"], kw["v_proj_bias"]}
    if len(biases) != 1:
        raise ValueError("qwen2: q_proj_bias, k_proj_bias and v_proj_bias must be equal here")
    return dict(
        family="QWEN2",
        vocab_size=kw["vocab_size"],
        num_layers=kw["num_layers"],
        num_heads=kw["num_heads"],
        num_kv_heads=kw["num_kv_heads"],
        embed_dim=kw["embed_dim"],
        intermediate_dim=kw["intermediate_dim"],
        max_seq_len=kw["max_seq_len"],
        head_dim=kw["head_dim"],
        norm_eps=kw["norm_eps"],
        rope_base=float(kw["rope_base"]),
        tie_embeddings=kw["tie_word_embeddings"],
        qkv_bias=biases.pop(),
    )


def qwen2(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int | None = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
    q_proj_bias: bool = True,
    k_proj_bias: bool = True,
    v_proj_bias: bool = True,
    q_norm: bool = False,
    k_norm: bool = False,
) -> TransformerDecoder:
    """A Qwen2 / Qwen2.5 decoder of any shape (q/k/v biases, optional tied embeddings)."""
    kw = dict(locals())
    kw["q_norm"] = kw["q_norm"] or None
    kw["k_norm"] = kw["k_norm"] or None
    return _decoder(None, **_qwen2_fields(kw))


def lora_qwen2(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int | None = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
    q_proj_bias: bool = True,
    k_proj_bias: bool = True,
    v_proj_bias: bool = True,
    q_norm: bool = False,
    k_norm: bool = False,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """A Qwen2 decoder of any shape with LoRA / DoRA adapters."""
    kw = dict(locals())
    kw["q_norm"] = kw["q_norm"] or None
    kw["k_norm"] = kw["k_norm"] or None
    lora = _lora_args(lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, lora_rank,
                      lora_alpha, lora_dropout, use_dora, quantize_base)  # fmt: skip
    return _decoder(lora, **_qwen2_fields(kw))


def _plain_fields(family: str, kw: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return dict(
        family=family,
        vocab_size=kw["vocab_size"],
        num_layers=kw["num_layers"],
        num_heads=kw["num_heads"],
        num_kv_heads=kw["num_kv_heads"],
        embed_dim=kw["embed_dim"],
        intermediate_dim=kw["intermediate_dim"],
        max_seq_len=kw["max_seq_len"],
        norm_eps=kw["norm_eps"],
        rope_base=float(kw["rope_base"]),
        **extra,
    )


def phi3(
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
    """A Phi-3 decoder of any shape (Llama-like; fused qkv / gate_up are a checkpoint format)."""
    return _decoder(None, **_plain_fields("PHI3_MINI", dict(locals())))


def lora_phi3(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
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
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """A Phi-3 decoder of any shape with LoRA / DoRA adapters."""
    lora = _lora_args(lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, lora_rank,
                      lora_alpha, lora_dropout, use_dora, quantize_base)  # fmt: skip
    return _decoder(lora, **_plain_fields("PHI3_MINI", dict(locals())))


def mistral(
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
    """A Mistral decoder of any shape."""
    return _decoder(None, **_plain_fields("MISTRAL", dict(locals())))


def lora_mistral(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
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
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """A Mistral decoder of any shape with LoRA / DoRA adapters."""
    lora = _lora_args(lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, lora_rank,
                      lora_alpha, lora_dropout, use_dora, quantize_base)  # fmt: skip
    return _decoder(lora, **_plain_fields("MISTRAL", dict(locals())))


def _gemma_fields(kw: dict[str, Any]) -> dict[str, Any]:
    if not kw["norm_embeddings"]:
        raise ValueError("gemma(norm_embeddings=False) is not supported: Gemma scales embeddings")
    return _plain_fields("GEMMA", kw, head_dim=kw["head_dim"], norm_offset=True,
                         activation="gelu_tanh", tie_embeddings=True, embed_scale=True)  # fmt: skip


def gemma(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-6,
    rope_base: int = 10_000,
    norm_embeddings: bool = True,
) -> TransformerDecoder:
    """A Gemma decoder of any shape (GeGLU, (1 + w) RMSNorm, scaled and tied embeddings)."""
    return _decoder(None, **_gemma_fields(dict(locals())))


def lora_gemma(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-6,
    rope_base: int = 10_000,
    norm_embeddings: bool = True,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """A Gemma decoder of any shape with LoRA / DoRA adapters (no output adapter: tied)."""
    lora = _lora_args(lora_attn_modules, apply_lora_to_mlp, False, lora_rank, lora_alpha,
                      lora_dropout, use_dora, quantize_base)  # fmt: skip
    return _decoder(lora, **_gemma_fields(dict(locals())))
