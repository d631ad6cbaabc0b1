"""Gemma 4 text decoders as data: the published checkpoints' ``config.json`` ``text_config``.

Every published Gemma 4 checkpoint is a ``Gemma4ForConditionalGeneration`` (vision, and for
E2B / E4B audio, encoders around the text decoder); these specs are the text decoder only
(``build_from_hf`` of the full ``config.json`` builds the same). Values follow the
checkpoints' ``text_config``; where a value was inferred rather than read from a released
file it says so. Merged into ``tunesmith.models._specs.SPECS``.
"""

from __future__ import annotations

from typing import Any

from tunesmith.models._hf_config import spec_from_hf_config
from tunesmith.models.spec import FULL, SLIDING, ModelSpec

__all__ = ["GEMMA4_CONFIGS", "GEMMA4_SPECS"]


def _types(n_layers: int, period: int) -> list[str]:
    """``period - 1`` sliding-window layers, then one global layer."""
    return [FULL if (i + 1) % period == 0 else SLIDING for i in range(n_layers)]


_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
}
_COMMON: dict[str, Any] = dict(
    model_type="gemma4_text",
    vocab_size=262_144,
    head_dim=256,
    global_head_dim=512,
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
    final_logit_softcapping=30.0,
    tie_word_embeddings=True,
    rope_parameters=_ROPE,
)

#: builder name -> the published ``text_config`` values
GEMMA4_CONFIGS: dict[str, dict[str, Any]] = {
    # E2B / E4B: per-layer embeddings, the last layers reuse shared keys / values (128k)
    "gemma4_e2b": dict(
        _COMMON,
        hidden_size=1536,
        intermediate_size=6144,
        num_hidden_layers=35,
        num_attention_heads=8,
        num_key_value_heads=1,
        sliding_window=512,
        max_position_embeddings=131_072,
        layer_types=_types(35, 5),
        hidden_size_per_layer_input=256,
        vocab_size_per_layer_input=262_144,
        num_kv_shared_layers=20,
        use_double_wide_mlp=True,
        attention_k_eq_v=False,
    ),
    "gemma4_e4b": dict(
        _COMMON,
        hidden_size=2560,
        intermediate_size=10_240,
        num_hidden_layers=42,
        num_attention_heads=8,
        num_key_value_heads=2,
        sliding_window=512,
        max_position_embeddings=131_072,
        layer_types=_types(42, 6),
        hidden_size_per_layer_input=256,
        vocab_size_per_layer_input=262_144,
        num_kv_shared_layers=18,
        use_double_wide_mlp=False,
        attention_k_eq_v=False,
    ),
    # 31B dense and 26B A4B (128 experts, 8 per token, beside a dense MLP): global layers with
    # values = keys and fewer kv heads (256k). max_position_embeddings 262144 follows the
    # model card's 256k context (inferred, not read from the released file).
    "gemma4_31b": dict(
        _COMMON,
        hidden_size=5376,
        intermediate_size=21_504,
        num_hidden_layers=60,
        num_attention_heads=32,
        num_key_value_heads=16,
        num_global_key_value_heads=4,
        attention_k_eq_v=True,
        sliding_window=1024,
        max_position_embeddings=262_144,
        layer_types=_types(60, 6),
        hidden_size_per_layer_input=0,
    ),
    # 26B A4B: the values of its llama.cpp GGUF metadata (block count, widths, per-layer kv
    # heads, windows, experts); attention_k_eq_v is implied by its 2 global kv heads
    "gemma4_26b_a4b": dict(
        _COMMON,
        hidden_size=2816,
        intermediate_size=2112,
        num_hidden_layers=30,
        num_attention_heads=16,
        num_key_value_heads=8,
        num_global_key_value_heads=2,
        attention_k_eq_v=True,
        sliding_window=1024,
        max_position_embeddings=262_144,
        layer_types=_types(30, 6),
        hidden_size_per_layer_input=0,
        enable_moe_block=True,
        num_experts=128,
        top_k_experts=8,
        moe_intermediate_size=704,
    ),
}

GEMMA4_SPECS: dict[str, ModelSpec] = {
    name: spec_from_hf_config(values) for name, values in GEMMA4_CONFIGS.items()
}
