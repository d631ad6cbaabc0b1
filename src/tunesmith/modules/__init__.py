"""tunesmith.modules: attention, RoPE, norms, feed-forward, decoder, KV cache, masks."""

from tunesmith.modules.attention import MultiHeadAttention
from tunesmith.modules.classifier import classifier_model, sequence_scores
from tunesmith.modules.common_utils import (
    delete_kv_caches,
    disable_kv_cache,
    local_kv_cache,
    reparametrize_as_dtype_state_dict_post_hook,
)
from tunesmith.modules.feed_forward import FeedForward
from tunesmith.modules.kv_cache import KVCache
from tunesmith.modules.masks import (
    causal_mask,
    packed_causal_mask,
    padding_to_causal_mask,
    sliding_window_band,
)
from tunesmith.modules.norms import RMSNorm
from tunesmith.modules.rope import RopeScaling, RotaryEmbedding, apply_rope, rope_inv_freq
from tunesmith.modules.tied_linear import TiedLinear
from tunesmith.modules.transformer import TransformerDecoder, TransformerSelfAttentionLayer

__all__ = [
    "FeedForward",
    "KVCache",
    "MultiHeadAttention",
    "RMSNorm",
    "RopeScaling",
    "RotaryEmbedding",
    "TiedLinear",
    "TransformerDecoder",
    "TransformerSelfAttentionLayer",
    "apply_rope",
    "causal_mask",
    "classifier_model",
    "delete_kv_caches",
    "disable_kv_cache",
    "local_kv_cache",
    "reparametrize_as_dtype_state_dict_post_hook",
    "packed_causal_mask",
    "padding_to_causal_mask",
    "rope_inv_freq",
    "sequence_scores",
    "sliding_window_band",
]
