"""Granite 4.0 dense checkpoints (``granitemoehybrid`` with attention in every layer).

The Granite 4.0 dense models (granite-4.0-micro, granite-4.0-1b, granite-4.0-350m) are
released as ``GraniteMoeHybridForCausalLM``, the architecture of the hybrid Mamba-2 models,
with every layer an attention layer and no experts: that is Granite 3's decoder (embedding /
residual / attention multipliers, logits scaling) with the feed-forward stored fused as
``shared_mlp.input_linear`` (``[2 * hidden, dim]``: gate rows, then up rows) and
``shared_mlp.output_linear``. The hybrid models (granite-4.0-h-micro, -h-tiny, -h-small,
-h-1b, -h-350m) have Mamba-2 layers and are refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tunesmith.config import ConfigError

__all__ = [
    "granite4_text_config",
    "granite4_uses_rope",
    "granite4_hf_to_llama_layout",
    "granite4_llama_to_hf_layout",
]

_ATTENTION = ("attention", "full_attention")
_FUSED_IN = "shared_mlp.input_linear."
_OUT = "shared_mlp.output_linear."
_PARTS = ("w1", "w3")  # gate rows, then up rows (tunesmith._peft_fused's names)


def granite4_text_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config of a dense Granite 4.0 checkpoint as the Granite (3.x) reader takes it.

    Raises ``ConfigError`` for the hybrid Mamba-2 checkpoints and for ones with experts.
    """
    n_layers = cfg["num_hidden_layers"]
    types = list(cfg.get("layer_types") or cfg.get("layers_block_type") or ["mamba"] * n_layers)
    hybrid = [t for t in types if t not in _ATTENTION]
    archs = ", ".join(cfg.get("architectures") or ["GraniteMoeHybridForCausalLM"])
    if hybrid:
        raise ConfigError(
            f"config.json: granitemoehybrid ({archs}) with {len(hybrid)} Mamba-2 layers "
            "(the hybrid Granite 4.0 H models) is not supported; tunesmith builds the "
            "attention-only Granite 4.0 models (granite-4.0-micro, -1b, -350m)."
        )
    if int(cfg.get("num_local_experts") or 0) > 0:
        raise ConfigError(
            f"config.json: granitemoehybrid ({archs}) with {cfg['num_local_experts']} experts "
            "is not supported; tunesmith builds the dense Granite 4.0 models (no experts)."
        )
    out = {k: v for k, v in cfg.items() if k not in ("layer_types", "layers_block_type")}
    out["intermediate_size"] = cfg.get("shared_intermediate_size") or cfg["intermediate_size"]
    out["sliding_window"] = None
    return out


def granite4_uses_rope(cfg: Mapping[str, Any]) -> bool:
    """``position_embedding_type == "rope"`` (transformers' default, None, is no RoPE)."""
    return cfg.get("position_embedding_type") == "rope"


def granite4_hf_to_llama_layout(
    state_dict: Mapping[str, Tensor], fused_blocks: Mapping[str, list[str]] | None = None
) -> dict[str, Tensor]:
    """Split the fused ``shared_mlp`` projections into ``mlp.gate_proj / up_proj /
    down_proj``. A LoRA adapter of the fused input shares its ``lora_a`` between both halves,
    unless ``fused_blocks`` names its module (``model.layers.0.shared_mlp.input_linear``) as
    written in the block form of :mod:`tunesmith.models._peft_fused` (own A per half)."""
    from tunesmith.models._peft_fused import is_lora_suffix, split_fused_lora

    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if _FUSED_IN in key:
            prefix, suffix = key.split(_FUSED_IN)
            module = f"{prefix}{_FUSED_IN}".rstrip(".")
            if module in (fused_blocks or {}) and is_lora_suffix(suffix):
                rows = value.shape[0] // 2 if suffix != "lora_a.weight" else 0
                parts = split_fused_lora(suffix, value, _PARTS, [rows, rows], _PARTS)
                gate, up = parts["w1"], parts["w3"]
            elif suffix == "lora_a.weight":
                gate = up = value
            else:
                gate, up = value.chunk(2, dim=0)
            out[f"{prefix}mlp.gate_proj.{suffix}"] = gate
            out[f"{prefix}mlp.up_proj.{suffix}"] = up
        elif _OUT in key:
            out[key.replace(_OUT, "mlp.down_proj.")] = value
        else:
            out[key] = value
    return out


def granite4_llama_to_hf_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`granite4_hf_to_llama_layout`: gate / up adapters with their own A
    become one block-form adapter (:func:`tunesmith.models._peft_fused.fuse_lora`)."""
    from tunesmith.models._peft_fused import fuse_lora, is_lora_suffix

    out: dict[str, Tensor] = {}
    adapters: dict[str, dict[str, dict[str, Tensor]]] = {}
    for key, value in state_dict.items():
        if ".mlp.up_proj." in key:
            continue
        if ".mlp.gate_proj." in key:
            prefix, suffix = key.split("mlp.gate_proj.")
            up = state_dict[f"{prefix}mlp.up_proj.{suffix}"]
            if is_lora_suffix(suffix):
                adapters.setdefault(prefix, {})[suffix] = {"w1": value, "w3": up}
            else:
                out[f"{prefix}{_FUSED_IN}{suffix}"] = torch.cat([value, up], dim=0)
        elif ".mlp.down_proj." in key:
            out[key.replace("mlp.down_proj.", _OUT)] = value
        else:
            out[key] = value
    for prefix, parts in adapters.items():
        for suffix, fused in fuse_lora("mlp.gate_up_proj", parts, None, prefix).items():
            out[f"{prefix}{_FUSED_IN}{suffix}"] = fused
    return out
