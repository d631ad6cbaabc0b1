"""transformers' ``T5EncoderModel`` / ``T5ForConditionalGeneration`` state dict ->
:class:`T5Encoder`'s (torchtune's ``t5_encoder_hf_to_tune``): the encoder only; the shared
relative-position bias is layer 0's."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

__all__ = ["t5_encoder_hf_to_tune"]

_LAYER = {
    "layer.0.SelfAttention.q": "attn.q_proj",
    "layer.0.SelfAttention.k": "attn.k_proj",
    "layer.0.SelfAttention.v": "attn.v_proj",
    "layer.0.SelfAttention.o": "attn.output_proj",
    "layer.0.layer_norm": "sa_norm",
    "layer.1.DenseReluDense.wi_0": "mlp.w1",
    "layer.1.DenseReluDense.wi_1": "mlp.w3",
    "layer.1.DenseReluDense.wo": "mlp.w2",
    "layer.1.layer_norm": "mlp_norm",
}
_KEY = re.compile(r"encoder\.block\.(\d+)\.(.+)\.weight")
_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def t5_encoder_hf_to_tune(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF T5 keys -> :class:`T5Encoder` keys (RMSNorm weights become ``scale``); decoder and
    LM-head keys are dropped.

    Raises:
        ValueError: an encoder key this conversion does not know (named).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("decoder.", "lm_head.")):
            continue
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["final_norm.scale"] = value
        elif key == _BIAS:
            out["relative_position_bias.embedding.weight"] = value
        else:
            m = _KEY.fullmatch(key)
            if m is None or m.group(2) not in _LAYER:
                raise ValueError(f"t5_encoder_hf_to_tune: unknown T5 encoder key {key!r}")
            name = _LAYER[m.group(2)]
            suffix = "scale" if name.endswith("norm") else "weight"
            out[f"layers.{m.group(1)}.{name}.{suffix}"] = value
    return out
