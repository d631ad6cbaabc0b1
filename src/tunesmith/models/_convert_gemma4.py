"""Gemma 4 text decoders: ``config.json`` fields and the checkpoint layouts.

Config: a ``gemma4_text`` config is read directly; a multimodal ``gemma4`` config
(``Gemma4ForConditionalGeneration``, every published checkpoint) is read through its
``text_config`` (the vision / audio towers are not built). Full-attention layers take
``global_head_dim`` / ``num_global_key_value_heads`` (published configs) or transformers'
serialised ``per_layer_config`` overrides.

Weights: ``Gemma4ForCausalLM`` keys (``model.layers.*``) or ``Gemma4ForConditionalGeneration``
keys (``model.language_model.*``; its ``model.vision_tower`` / ``embed_vision`` /
``audio_tower`` / ``embed_audio`` tensors are skipped by ``hf_to_native``; the HF checkpointer
keeps them aside and writes them back unchanged, ``gemma4_towers``). Layers
reusing shared keys / values have no ``k_proj`` / ``v_proj`` / ``k_norm``; such tensors in a
checkpoint are unused (transformers ignores them too) and skipped. Writing back uses the
layout the config names (``model_type: gemma4`` -> ``model.language_model.``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tunesmith.config import ConfigError
from tunesmith.models.spec import FULL, SLIDING

__all__ = [
    "GEMMA4_LAYER",
    "GEMMA4_NORMS",
    "GEMMA4_TOP",
    "gemma4_native_extras",
    "gemma4_fields",
    "gemma4_from_hf_layout",
    "gemma4_text_config",
    "gemma4_to_hf_layout",
    "gemma4_towers",
]

#: HF layer module -> native (Gemma 2's sandwich norms + per-layer embedding gate)
GEMMA4_LAYER = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.output_proj",
    "self_attn.q_norm": "attn.q_norm",
    "self_attn.k_norm": "attn.k_norm",
    "mlp.gate_proj": "mlp.w1",
    "mlp.down_proj": "mlp.w2",
    "mlp.up_proj": "mlp.w3",
    "input_layernorm": "sa_norm",
    "post_attention_layernorm": "sa_scale",
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "mlp_scale",
    "per_layer_input_gate": "per_layer_gate.gate",
    "per_layer_projection": "per_layer_gate.proj",
    "post_per_layer_input_norm": "per_layer_gate.norm",
    # 26B A4B: experts beside the dense MLP (modules.moe.FeedForwardWithExperts)
    "router.proj": "mlp.moe.router.gate",
    "router": "mlp.moe.router",
    "post_feedforward_layernorm_1": "mlp.dense_out_norm",
    "pre_feedforward_layernorm_2": "mlp.expert_in_norm",
    "post_feedforward_layernorm_2": "mlp.expert_out_norm",
}
#: norms whose ``weight`` is native ``scale`` beyond convert_weights' usual ones
GEMMA4_NORMS = ("dense_out_norm", "expert_in_norm", "expert_out_norm")
GEMMA4_TOP = {
    "model.embed_tokens": "tok_embeddings",
    "model.norm": "norm",
    "lm_head": "output",
    "model.embed_tokens_per_layer": "per_layer_embeddings.embeddings",
    "model.per_layer_model_projection": "per_layer_embeddings.proj",
    "model.per_layer_projection_norm": "per_layer_embeddings.norm",
}
_TOWERS = ("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.")
_MULTIMODAL = "model.language_model."
_SCALAR_HF = re.compile(r"^model\.layers\.(\d+)\.layer_scalar$")
_SCALAR_NATIVE = re.compile(r"^layers\.(\d+)\.layer_scalar$")
_EXPERTS_HF = re.compile(r"^model\.layers\.(\d+)\.experts\.(gate_up|down)_proj$")
_EXPERTS_NATIVE = re.compile(r"^layers\.(\d+)\.mlp\.moe\.experts\.(gate|up|down)_proj$")
_SHARED_KV = re.compile(r"^model\.layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.")


def gemma4_text_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``gemma4_text`` config of a ``gemma4`` / ``gemma4_text`` config dict."""
    if cfg.get("model_type") == "gemma4":
        text = dict(cfg.get("text_config") or {})
        text.setdefault("model_type", "gemma4_text")
        if "tie_word_embeddings" in cfg:
            text.setdefault("tie_word_embeddings", cfg["tie_word_embeddings"])
        cfg = text
    out = dict(cfg)
    n = out["num_hidden_layers"]
    if out.get("layer_types") is None:  # transformers' default: 5 sliding, then 1 full
        out["layer_types"] = [SLIDING if (i + 1) % 6 else FULL for i in range(n)]
    types = list(out["layer_types"])
    types[-1] = FULL  # transformers forces the last layer to attend fully
    out["layer_types"] = types
    return out


def _global_attention(cfg: Mapping[str, Any]) -> tuple[int, int | None]:
    """(head width, kv heads or None) of the full-attention layers."""
    overrides = cfg.get("per_layer_config")
    if overrides and "global_head_dim" not in cfg:
        types = cfg["layer_types"]
        seen = {(o.get("head_dim"), o.get("num_key_value_heads")) for o in overrides.values()}
        full = {i for i, t in enumerate(types) if t == FULL}
        if len(seen) != 1 or {int(k) for k in overrides} != full:  # keys may be "05"
            raise ConfigError(
                "config.json: per_layer_config must give every full-attention layer (and only "
                "those) the same head_dim / num_key_value_heads"
            )
        head_dim, kv = seen.pop()
        return int(head_dim or cfg["head_dim"]), None if kv is None else int(kv)
    kv = cfg.get("num_global_key_value_heads") if cfg.get("attention_k_eq_v", False) else None
    return int(cfg.get("global_head_dim") or 512), None if kv is None else int(kv)


def gemma4_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ModelSpec`` fields a Gemma 4 text config sets beyond the generic ones."""
    if cfg.get("use_bidirectional_attention") == "all":
        raise ConfigError(
            "config.json: use_bidirectional_attention='all' (a bidirectional encoder) is not "
            "supported; tunesmith builds causal decoders."
        )
    head_dim, kv = _global_attention(cfg)
    ple = cfg.get("hidden_size_per_layer_input") or None
    return dict(
        norm_offset=False,
        norm_scale_fp32=True,
        embed_scale=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        qk_norm=True,
        v_norm=True,
        post_norms=True,
        attn_scale=1.0,
        query_pre_attn_scalar=None,
        attn_softcap=None,
        final_softcap=cfg.get("final_logit_softcapping"),
        global_head_dim=head_dim,
        global_kv_heads=kv,
        attn_k_eq_v=bool(cfg.get("attention_k_eq_v", False)),
        kv_shared_layers=int(cfg.get("num_kv_shared_layers") or 0),
        double_wide_mlp=bool(cfg.get("use_double_wide_mlp", False)),
        per_layer_dim=ple,
        per_layer_vocab_size=cfg.get("vocab_size_per_layer_input") if ple else None,
        layer_scalars=True,
        **_moe_fields(cfg),
    )


def _moe_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """26B A4B: every layer has ``num_experts`` experts beside its dense MLP."""
    if not cfg.get("enable_moe_block"):
        return {}
    return dict(
        num_experts=int(cfg["num_experts"]),
        experts_per_token=int(cfg["top_k_experts"]),
        moe_intermediate_dim=int(cfg["moe_intermediate_size"]),
        router_scoring="softmax",
        router_norm_topk=True,
        moe_beside_mlp=True,
    )


def gemma4_towers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The vision / audio tower tensors of a multimodal checkpoint (not built, not trained:
    the HF checkpointer writes them back unchanged so a saved checkpoint stays complete)."""
    return {k: v for k, v in state_dict.items() if k.startswith(_TOWERS)}


def _shared_layers(cfg: Mapping[str, Any]) -> set[int]:
    if not cfg:
        return set()
    text = gemma4_text_config(cfg)
    n = text["num_hidden_layers"]
    return set(range(n - int(text.get("num_kv_shared_layers") or 0), n))


def gemma4_from_hf_layout(
    state_dict: Mapping[str, Tensor], hf_config: Mapping[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(native layer scalars and grouped experts, the rest in ``Gemma4ForCausalLM`` keys)."""
    shared = _shared_layers(hf_config)
    scalars: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_TOWERS):
            continue
        if key.startswith(_MULTIMODAL):
            key = "model." + key[len(_MULTIMODAL) :]
        m = _SCALAR_HF.match(key)
        if m:
            scalars[f"layers.{m.group(1)}.layer_scalar"] = value
            continue
        m = _EXPERTS_HF.match(key)
        if m:  # HF [E, 2f, d] / [E, d, f] (nn.Linear layout) -> native [E, d, f] / [E, f, d]
            pre = f"layers.{m.group(1)}.mlp.moe.experts."
            if m.group(2) == "down":
                scalars[pre + "down_proj"] = value.transpose(1, 2).contiguous()
            else:
                gate, up = value.chunk(2, dim=1)
                scalars[pre + "gate_proj"] = gate.transpose(1, 2).contiguous()
                scalars[pre + "up_proj"] = up.transpose(1, 2).contiguous()
            continue
        m = _SHARED_KV.match(key)
        if m and int(m.group(1)) in shared:
            continue
        rest[key] = value
    return scalars, rest


def gemma4_native_extras(
    state_dict: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(layer scalars and grouped experts, the rest) of a native state dict."""
    extras: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        target = extras if _SCALAR_NATIVE.match(key) or _EXPERTS_NATIVE.match(key) else rest
        target[key] = value
    return extras, rest


def gemma4_to_hf_layout(
    extras: Mapping[str, Tensor], hf_keys: Mapping[str, Tensor], hf_config: Mapping[str, Any]
) -> dict[str, Tensor]:
    """``hf_keys`` (``Gemma4ForCausalLM`` keys) plus ``extras`` (``gemma4_native_extras``), in
    the layout of ``hf_config`` (``model.language_model.`` for a multimodal ``gemma4``
    config)."""
    out = dict(hf_keys)
    for key, value in extras.items():
        m = _SCALAR_NATIVE.match(key)
        if m:
            out[f"model.layers.{m.group(1)}.layer_scalar"] = value
            continue
        m = _EXPERTS_NATIVE.match(key)
        assert m is not None, key
        pre = f"model.layers.{m.group(1)}.experts."
        if m.group(2) == "down":
            out[pre + "down_proj"] = value.transpose(1, 2).contiguous()
        elif m.group(2) == "gate":
            up = extras[key.replace(".gate_proj", ".up_proj")]
            fused = (value.transpose(1, 2), up.transpose(1, 2))
            out[pre + "gate_up_proj"] = torch.cat(fused, dim=1).contiguous()
    if (hf_config or {}).get("model_type") != "gemma4":
        return out
    return {
        (_MULTIMODAL + k[len("model.") :] if k.startswith("model.") else k): v
        for k, v in out.items()
    }
