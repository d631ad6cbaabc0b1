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
    "refuse_granite4_mlp_lora",
]

_ATTENTION = ("attention", "full_attention")
_FUSED_IN = "shared_mlp.input_linear."
_OUT = "shared_mlp.output_linear."


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


def granite4_hf_to_llama_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Split the fused ``shared_mlp`` projections into ``mlp.gate_proj / up_proj /
    down_proj`` (LoRA ``lora_a`` of the fused input is shared by both halves)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if _FUSED_IN in key:
            prefix, suffix = key.split(_FUSED_IN)
            if suffix == "lora_a.weight":
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
    """Inverse of :func:`granite4_hf_to_llama_layout`."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if ".mlp.up_proj." in key:
            continue
        if ".mlp.gate_proj." in key:
            prefix, suffix = key.split("mlp.gate_proj.")
            up = state_dict[f"{prefix}mlp.up_proj.{suffix}"]
            if suffix == "lora_a.weight":
                if not torch.equal(value, up):
                    raise ValueError(
                        f"{prefix}: the gate / up LoRA adapters have different lora_a matrices "
                        "and cannot be written as one fused Granite 4 shared_mlp.input_linear "
                        "adapter; merge the adapters into the weights before exporting."
                    )
                out[f"{prefix}{_FUSED_IN}{suffix}"] = value
            else:
                out[f"{prefix}{_FUSED_IN}{suffix}"] = torch.cat([value, up], dim=0)
        elif ".mlp.down_proj." in key:
            out[key.replace("mlp.down_proj.", _OUT)] = value
        else:
            out[key] = value
    return out


def refuse_granite4_mlp_lora(family: str) -> None:
    """MLP LoRA on Granite 4.0: its fused ``shared_mlp.input_linear`` cannot hold separate
    gate / up adapters in PEFT's format, so they are refused before any work."""
    if family == "GRANITE4":
        raise ValueError(
            "model.apply_lora_to_mlp=True is not supported for Granite 4.0: its checkpoints "
            "fuse gate / up into shared_mlp.input_linear, so separate gate / up adapters "
            "cannot be saved as a PEFT adapter; set apply_lora_to_mlp=False."
        )
