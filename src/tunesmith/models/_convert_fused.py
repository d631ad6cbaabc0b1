"""Phi-3 / Phi-4-mini's fused projections: Hugging Face ``qkv_proj`` / ``gate_up_proj`` <->
tunesmith's separate q/k/v and w1/w3 (weights, and their LoRA / DoRA adapters through
:mod:`tunesmith.models._peft_fused`). Used by :mod:`tunesmith.models.convert_weights`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tunesmith.models._peft_fused import FUSED_PARTS, fuse_lora, is_lora_suffix, split_fused_lora

__all__ = ["attn_sizes", "fuse_parts", "split_fused"]


def attn_sizes(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    return n_heads, n_kv, head_dim


def _fused_sizes(fused: str, cfg: Mapping[str, Any]) -> list[int] | None:
    """The output rows of each part of a fused Phi-3 module (None without a config)."""
    if not cfg:
        return None
    if fused.startswith("self_attn"):
        n_heads, n_kv, hd = attn_sizes(cfg)
        return [n_heads * hd, n_kv * hd, n_kv * hd]
    return [cfg["intermediate_size"]] * 2


def fuse_parts(
    fused: str, by_suffix: dict[str, dict[str, Tensor]], layer: str, cfg: Mapping[str, Any]
) -> dict[str, Tensor]:
    """``{suffix: {part: tensor}}`` of one layer's fused module -> ``{suffix: fused tensor}``:
    weights stacked; adapters via :func:`tunesmith.models._peft_fused.fuse_lora`."""
    names = FUSED_PARTS[fused]
    lora = {s: p for s, p in by_suffix.items() if is_lora_suffix(s)}
    out = fuse_lora(fused, lora, _fused_sizes(fused, cfg), f"layers.{layer}") if lora else {}
    for suffix, parts in by_suffix.items():
        if suffix in lora:
            continue
        missing = [n for n in names if n not in parts]
        if missing:
            raise KeyError(f"layers.{layer}: cannot fuse {fused}.{suffix}, missing {missing}.")
        out[suffix] = torch.cat([parts[n] for n in names], dim=0)
    return out


def split_fused(
    out: dict[str, Tensor],
    prefix: str,
    fused: str,
    suffix: str,
    value: Tensor,
    cfg: Mapping,
    blocks: list[str] | None = None,
) -> None:
    names = FUSED_PARTS[fused]
    parent = "attn" if fused.startswith("self_attn") else "mlp"
    if blocks and is_lora_suffix(suffix):  # block form: per-part A, block-diagonal B
        sizes = _fused_sizes(fused, cfg)
        if sizes is None:
            raise ValueError("hf_config is required to split Phi-3 fused adapters.")
        for name, part in split_fused_lora(suffix, value, names, sizes, blocks).items():
            out[f"{prefix}.{parent}.{name}.{suffix}"] = part
        return
    if suffix == "lora_a.weight":  # shared input projection: the same A for every part
        for name in names:
            out[f"{prefix}.{parent}.{name}.{suffix}"] = value
        return
    if parent == "attn":
        if not cfg:
            raise ValueError("hf_config is required to split Phi-3 qkv_proj weights.")
        n_heads, n_kv, hd = attn_sizes(cfg)
        parts = value.split([n_heads * hd, n_kv * hd, n_kv * hd], dim=0)
    else:
        parts = value.chunk(2, dim=0)
    for name, part in zip(names, parts, strict=True):
        out[f"{prefix}.{parent}.{name}.{suffix}"] = part
