"""Multimodal Mistral 3 checkpoints (``Mistral3ForConditionalGeneration``: Mistral Small 3.1 /
3.2, Ministral 3): the text decoder's weights.

Two key layouts exist: the files' (``language_model.model.*``,
``language_model.lm_head.weight``, ``vision_tower.*``, ``multi_modal_projector.*``: what the
hub holds and what transformers 5's ``save_pretrained`` still writes) and transformers 5's
module names (``model.language_model.*``, ``model.vision_tower.*``,
``model.multi_modal_projector.*``, ``lm_head.weight``), read too. ``mistral3_text_keys`` renames the decoder's
tensors to ``MistralForCausalLM`` keys and leaves the vision tower and projector out;
``mistral3_towers`` returns those (the HF checkpointer keeps them aside and writes them back
unchanged); ``mistral3_layout`` writes ``MistralForCausalLM`` keys back in the files' layout,
or in the module layout when the towers were read in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["is_mistral3", "mistral3_layout", "mistral3_text_keys", "mistral3_towers"]

_TOWERS = (
    "model.vision_tower.",
    "model.multi_modal_projector.",
    "vision_tower.",
    "multi_modal_projector.",
)
_MODULE, _LEGACY = "model.language_model.", "language_model.model."


def is_mistral3(cfg: Mapping[str, Any] | None) -> bool:
    """Whether a ``config.json`` dict is a multimodal ``mistral3`` one."""
    return bool(cfg) and cfg.get("model_type") == "mistral3"


def mistral3_towers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The vision tower / projector tensors (not built, not trained)."""
    return {k: v for k, v in state_dict.items() if k.startswith(_TOWERS)}


def mistral3_text_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The text decoder's tensors under ``MistralForCausalLM`` keys (either layout)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_TOWERS):
            continue
        if key.startswith(_MODULE):
            key = "model." + key[len(_MODULE) :]
        elif key.startswith(_LEGACY):
            key = "model." + key[len(_LEGACY) :]
        elif key == "language_model.lm_head.weight":
            key = "lm_head.weight"
        out[key] = value
    return out


def mistral3_layout(
    hf_keys: Mapping[str, Tensor], towers: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """``MistralForCausalLM`` keys in the files' layout, or in the module layout when
    ``towers`` (as read) are in it."""
    legacy = not towers or not all(k.startswith("model.") for k in towers)
    out: dict[str, Tensor] = {}
    for key, value in hf_keys.items():
        if key.startswith("model."):
            key = (_LEGACY if legacy else _MODULE) + key[len("model.") :]
        elif key == "lm_head.weight" and legacy:
            key = "language_model.lm_head.weight"
        out[key] = value
    return out
