"""transformers' ``CLIPModel`` / ``CLIPTextModel`` state dict -> :class:`CLIPTextEncoder`'s
(torchtune's ``clip_text_hf_to_tune``): the text tower only; the vision tower, the
projections, ``logit_scale`` and ``position_ids`` are dropped."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

__all__ = ["clip_text_hf_to_tune"]

_LAYER = {
    "layer_norm1": "sa_norm",
    "layer_norm2": "mlp_norm",
    "mlp.fc1": "mlp.w1",
    "mlp.fc2": "mlp.w2",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.output_proj",
}
_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "position_embedding",
    "final_layer_norm.weight": "final_norm.weight",
    "final_layer_norm.bias": "final_norm.bias",
}
_DROPPED = {"logit_scale", "text_projection.weight", "visual_projection.weight"}
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


def clip_text_hf_to_tune(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF keys (``text_model.`` prefixed or not) -> :class:`CLIPTextEncoder` keys.

    Raises:
        ValueError: a text-model key this conversion does not know (named).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("vision_model.") or key in _DROPPED:
            continue
        rest = key.removeprefix("text_model.")
        if rest == "embeddings.position_ids":
            continue
        if rest in _TOP:
            out[_TOP[rest]] = value
            continue
        m = _LAYER_KEY.fullmatch(rest)
        if m is None or m.group(2) not in _LAYER:
            raise ValueError(f"clip_text_hf_to_tune: unknown CLIP text key {key!r}")
        out[f"layers.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"] = value
    return out
