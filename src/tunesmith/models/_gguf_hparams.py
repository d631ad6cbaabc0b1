"""The ``{arch}.*`` hyper-parameter keys of a GGUF export: what llama.cpp's loader for the
spec's architecture reads (sizes, RoPE and its scaling, windows, soft-caps, experts, Granite's
multipliers, Ministral 3's query scaling), as ``convert_hf_to_gguf.py`` writes them."""

from __future__ import annotations

import math
from typing import Any

from tunesmith.models._gguf_arch import gguf_arch
from tunesmith.models.spec import ModelSpec, RopeScaling

__all__ = ["write_hparams"]


def write_hparams(writer: Any, spec: ModelSpec) -> None:
    """The ``{arch}.*`` hyper-parameter keys llama.cpp reads for ``spec``'s architecture."""
    import gguf

    writer.add_context_length(spec.max_seq_len)
    writer.add_embedding_length(spec.embed_dim)
    writer.add_block_count(spec.num_layers)
    writer.add_feed_forward_length(spec.intermediate_dim)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_dimension_count(spec.rotary_dim or spec.resolved_head_dim)
    if spec.resolved_head_dim != spec.embed_dim // spec.num_heads:
        writer.add_key_length(spec.resolved_head_dim)
        writer.add_value_length(spec.resolved_head_dim)
    writer.add_rope_freq_base(spec.rope_base)
    writer.add_layer_norm_rms_eps(spec.norm_eps)
    writer.add_vocab_size(spec.vocab_size)
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(spec.rope_scaling.factor)
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "yarn":
        _yarn_hparams(writer, spec.rope_scaling)
    arch = gguf_arch(spec)
    if spec.num_experts:
        writer.add_expert_count(spec.num_experts)
        writer.add_expert_used_count(spec.experts_per_token)
        if arch in ("qwen3moe", "gpt-oss", "llama4"):
            writer.add_expert_feed_forward_length(
                spec.moe_intermediate_dim or spec.intermediate_dim
            )
    if arch.startswith("gemma"):
        if spec.resolved_head_dim == spec.embed_dim // spec.num_heads:
            writer.add_key_length(spec.resolved_head_dim)
            writer.add_value_length(spec.resolved_head_dim)
        if spec.attn_softcap is not None:
            writer.add_attn_logit_softcapping(spec.attn_softcap)
        if spec.final_softcap is not None:
            writer.add_final_logit_softcapping(spec.final_softcap)
        if arch != "gemma":  # no window: one as long as the context (llama.cpp's default: 4096)
            writer.add_sliding_window(spec.sliding_window or spec.max_seq_len)
        if spec.local_rope_base is not None:
            writer.add_rope_freq_base_swa(spec.local_rope_base)
    elif arch == "phi3":
        s = spec.rope_scaling
        longrope = s is not None and s.rope_type == "longrope"
        original = s.original_max_position_embeddings if longrope else spec.max_seq_len
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_sliding_window(spec.sliding_window or 0)
        if longrope:
            factor = spec.max_seq_len / original
            attn = s.attention_factor
            if attn is None:
                attn = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
            writer.add_rope_scaling_attn_factors(attn)
    elif arch == "olmo2" and spec.sliding_window is not None:  # OLMo 3: 3 of every 4 slide
        writer.add_sliding_window(spec.sliding_window)
        if spec.local_rope_base is not None:  # unscaled RoPE there (llama.cpp's olmo2 graph)
            writer.add_rope_freq_base_swa(spec.local_rope_base)
    elif arch == "gpt-oss":  # no window: one as long as the context (pattern: every other)
        writer.add_sliding_window(spec.sliding_window or spec.max_seq_len)
    elif arch == "llama4":
        moe = [i for i in range(spec.num_layers) if spec.is_moe_layer(i)]
        writer.add_interleave_moe_layer_step(moe[0] + 1)  # chunks / temperature: fixed
    elif arch == "granite":
        _granite_hparams(writer, spec)
    elif arch == "mistral3" and spec.rope_scaling is not None and spec.rope_scaling.factor > 1:
        # llama.cpp's mistral3 yarn: cos / sin times m(1) / m(log_mul), m(x) = 0.1 x ln(f) + 1
        s = spec.rope_scaling
        own = 0.1 * math.log(s.factor) + 1.0
        writer.add_rope_scaling_yarn_log_mul(
            (own / s.cos_sin_scale - 1.0) / (0.1 * math.log(s.factor))
        )
    if arch == "mistral3" and spec.query_log_scaling is not None:
        beta, length = spec.query_log_scaling  # queries times 1 + beta ln(1 + floor(p / length))
        writer.add_attn_temperature_scale(beta)
        writer.add_attn_temperature_length(int(length))


def _granite_hparams(writer: Any, spec: ModelSpec) -> None:
    """Granite's multipliers: embeddings times ``embedding_scale``, each block's outputs
    times ``residual_scale``, softmax scale ``attention.scale``, logits / ``logit_scale``;
    no RoPE at all (Granite 4.0 without position embeddings): ``rope.scaling.finetuned``
    false, llama.cpp's switch for it."""
    writer.add_logit_scale(spec.logits_divisor or 1.0)
    if spec.embed_multiplier is not None:
        writer.add_embedding_scale(spec.embed_multiplier)
    if spec.residual_multiplier is not None:
        writer.add_residual_scale(spec.residual_multiplier)
    if spec.attn_scale is not None:
        writer.add_attention_scale(spec.attn_scale)
    if spec.nope_layers:
        writer.add_rope_scaling_finetuned(False)


def _yarn_hparams(writer: Any, s: RopeScaling) -> None:
    """YaRN as llama.cpp reads it: type, factor, original context, the ramp's betas (its
    cos / sin factor is its own ``0.1 ln(factor) + 1``: _rope_problems checks it)."""
    import gguf

    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(s.factor)
    writer.add_rope_scaling_orig_ctx_len(s.original_max_position_embeddings)
    writer.add_rope_scaling_yarn_beta_fast(s.beta_fast)
    writer.add_rope_scaling_yarn_beta_slow(s.beta_slow)
