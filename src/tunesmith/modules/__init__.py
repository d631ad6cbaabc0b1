"""tunesmith.modules: attention, RoPE, norms, feed-forward, decoder, KV cache, masks."""

from tunesmith.modules.attention import MultiHeadAttention
from tunesmith.modules.attention_utils import create_block_causal_mask, packed_block_causal_mask
from tunesmith.modules.classifier import classifier_model, sequence_scores
from tunesmith.modules.common_utils import (
    delete_kv_caches,
    disable_kv_cache,
    local_kv_cache,
    reparametrize_as_dtype_state_dict_post_hook,
)
from tunesmith.modules.feed_forward import FeedForward
from tunesmith.modules.fusion import TransformerCrossAttentionLayer
from tunesmith.modules.kv_cache import KVCache, KVCacheBatchError, KVCacheOverflowError
from tunesmith.modules.layer_dropout import LayerDropout, prepare_layer_dropout
from tunesmith.modules.low_precision import FrozenNF4Linear
from tunesmith.modules.masks import (
    causal_mask,
    packed_causal_mask,
    padding_to_causal_mask,
    sliding_window_band,
)
from tunesmith.modules.norms import Fp32LayerNorm, RMSNorm
from tunesmith.modules.position_embeddings import (
    RotaryPositionalEmbeddings,
    VisionRotaryPositionalEmbeddings,
)
from tunesmith.modules.rope import RopeScaling, RotaryEmbedding, apply_rope, rope_inv_freq
from tunesmith.modules.tied_linear import TiedLinear
from tunesmith.modules.transformer import TransformerDecoder, TransformerSelfAttentionLayer
from tunesmith.modules.vision_transformer import TanhGate, VisionTransformer
from tunesmith.modules.vq_embeddings import VectorQuantizedEmbeddings

__all__ = [
    "Fp32LayerNorm",
    "FrozenNF4Linear",
    "LayerDropout",
    "RotaryPositionalEmbeddings",
    "TanhGate",
    "TransformerCrossAttentionLayer",
    "VisionRotaryPositionalEmbeddings",
    "VectorQuantizedEmbeddings",
    "VisionTransformer",
    "create_block_causal_mask",
    "packed_block_causal_mask",
    "prepare_layer_dropout",
    "FeedForward",
    "KVCache",
    "KVCacheBatchError",
    "KVCacheOverflowError",
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
