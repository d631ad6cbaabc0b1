"""T5's encoder and tokenizer (https://arxiv.org/abs/1910.10683) with torchtune's API (the
text encoder of Flux-style diffusion models)."""

from tunesmith.models.t5._component_builders import t5_encoder
from tunesmith.models.t5._convert_weights import t5_encoder_hf_to_tune
from tunesmith.models.t5._encoder import (
    T5Encoder,
    T5EncoderLayer,
    T5EncoderRelativePositionBias,
    T5EncoderSelfAttention,
)
from tunesmith.models.t5._model_builders import t5_tokenizer, t5_v1_1_xxl_encoder
from tunesmith.models.t5._tokenizer import T5Tokenizer

__all__ = [
    "T5Encoder",
    "T5EncoderLayer",
    "T5EncoderRelativePositionBias",
    "T5EncoderSelfAttention",
    "T5Tokenizer",
    "t5_encoder",
    "t5_encoder_hf_to_tune",
    "t5_tokenizer",
    "t5_v1_1_xxl_encoder",
]
