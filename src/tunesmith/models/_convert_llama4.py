"""Llama 4 with its vision encoder (``LLAMA4``; HF ``Llama4ForConditionalGeneration``) <->
native, and its HF config -> :class:`~tunesmith.models.vision_spec.EarlyFusionSpec`.

HF files (and module names) hold ``language_model.{model.*, lm_head}`` (the text decoder:
converted by ``convert_weights``' ``LLAMA4`` rules, experts stacked, q/k permuted to the
rotate-half layout), ``vision_model.*`` and ``multi_modal_projector.linear_1``. Native:
``decoder.*``, ``encoder.clip.*`` (the tile encoder) and ``encoder.projection.{fc1, fc2,
output}`` (transformers' ``vision_adapter.mlp.fc{1,2}`` and the projector). The vision
q/k rows are interleaved (complex) RoPE pairs in HF, permuted here per head like the text
ones, so the conversion is a rename plus a row permutation: bit-exact both ways. LoRA / DoRA
suffixes are carried like their base module's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from tunesmith.models.vision_spec import EarlyFusionSpec, Llama4ViTSpec

__all__ = [
    "is_llama4_vision_config",
    "is_llama4_vision_state_dict",
    "llama4_hf_to_native",
    "llama4_native_to_hf",
    "llama4_spec_from_hf_config",
]

_LAYER = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.output_proj",
    "mlp.fc1": "mlp.w1",
    "mlp.fc2": "mlp.w2",
    "input_layernorm": "sa_norm",
    "post_attention_layernorm": "mlp_norm",
}
_TOP = {
    "vision_model.patch_embedding.linear": "encoder.clip.patch_embed",
    "vision_model.class_embedding": "encoder.clip.cls_embedding",
    "vision_model.positional_embedding_vlm": "encoder.clip.pos_embedding",
    "vision_model.layernorm_pre": "encoder.clip.ln_pre",
    "vision_model.layernorm_post": "encoder.clip.ln_post",
    "vision_model.vision_adapter.mlp.fc1": "encoder.projection.fc1",
    "vision_model.vision_adapter.mlp.fc2": "encoder.projection.fc2",
    "multi_modal_projector.linear_1": "encoder.projection.output",
}
_HF_LAYER = re.compile(r"^vision_model\.model\.layers\.(\d+)\.(.+)$")
_NATIVE_LAYER = re.compile(r"^encoder\.clip\.layers\.(\d+)\.(.+)$")


def _cfg(hf_config: Any) -> Mapping[str, Any]:
    if hf_config is None:
        raise ValueError("LLAMA4 vision conversion needs the Hugging Face config.json")
    return hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()


def is_llama4_vision_config(hf_config: Any) -> bool:
    """A ``Llama4ForConditionalGeneration`` config (``model_type: llama4``)."""
    if hf_config is None:
        return False
    cfg = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
    return cfg.get("model_type") == "llama4" or "vision_config" in cfg


def is_llama4_vision_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """HF (``language_model.*`` / ``vision_model.*``) or native (``decoder.*``) keys of the
    model with its encoder, as opposed to a text-only ``Llama4ForCausalLM``."""
    return any(k.startswith(("language_model.", "vision_model.", "decoder.")) for k in state_dict)


def _rename(rest: str, table: Mapping[str, str]) -> str | None:
    for src in sorted(table, key=len, reverse=True):
        if rest == src or rest.startswith(src + "."):
            return table[src] + rest[len(src) :]
    return None


def _vision_qk(key: str, value: Tensor, cfg: Mapping[str, Any], to_hf: bool) -> Tensor:
    from tunesmith.models.convert_weights import (
        _permutes_rows,
        permute_hf_to_meta,
        permute_meta_to_hf,
    )

    m = re.search(r"\.attn\.([qk])_proj\.(.+)$", key)
    if not m or not _permutes_rows(m.group(2)):
        return value
    vision = cfg["vision_config"]
    heads = vision["num_attention_heads"]
    fn = permute_hf_to_meta if to_hf else permute_meta_to_hf
    return fn(value, heads, vision["hidden_size"] // heads)


def llama4_hf_to_native(state_dict: Mapping[str, Tensor], hf_config: Any) -> dict[str, Tensor]:
    """HF ``Llama4ForConditionalGeneration`` state dict -> native keys."""
    from tunesmith.models.convert_weights import hf_to_native

    cfg = _cfg(hf_config)
    text: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("language_model."):
            text[key[len("language_model.") :]] = value
            continue
        m = _HF_LAYER.match(key)
        name = None
        if m:
            sub = _rename(m.group(2), _LAYER)
            name = sub and f"encoder.clip.layers.{m.group(1)}.{sub}"
        else:
            name = _rename(key, _TOP)
        if name is None:
            raise KeyError(f"Unexpected key {key!r} in a LLAMA4 Hugging Face checkpoint.")
        out[name] = _vision_qk(name, value, cfg, to_hf=False)
    for key, value in hf_to_native(text, "LLAMA4", cfg["text_config"]).items():
        out[f"decoder.{key}"] = value
    return out


def llama4_native_to_hf(state_dict: Mapping[str, Tensor], hf_config: Any) -> dict[str, Tensor]:
    """Inverse of :func:`llama4_hf_to_native`."""
    from tunesmith.models.convert_weights import native_to_hf

    cfg = _cfg(hf_config)
    inv_layer = {v: k for k, v in _LAYER.items()}
    inv_top = {v: k for k, v in _TOP.items()}
    text: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("decoder."):
            text[key[len("decoder.") :]] = value
            continue
        m = _NATIVE_LAYER.match(key)
        name = None
        if m:
            sub = _rename(m.group(2), inv_layer)
            name = sub and f"vision_model.model.layers.{m.group(1)}.{sub}"
        else:
            name = _rename(key, inv_top)
        if name is None:
            raise KeyError(f"Native key {key!r} has no LLAMA4 Hugging Face equivalent.")
        out[name] = _vision_qk(key, value, cfg, to_hf=True)
    for key, value in native_to_hf(text, "LLAMA4", cfg["text_config"]).items():
        out[f"language_model.{key}"] = value
    return out


def llama4_spec_from_hf_config(config: Any) -> EarlyFusionSpec:
    """An ``EarlyFusionSpec`` from a ``Llama4Config`` (dict or ``PretrainedConfig``)."""
    from tunesmith.models._hf_config import spec_from_hf_config

    cfg = _cfg(config)
    vision = cfg["vision_config"]
    if vision.get("vision_feature_layer", -1) != -1:
        raise ValueError("config.json: vision_feature_layer other than -1 is not supported")
    if vision.get("vision_output_dim", 4096) != vision.get("projector_output_dim", 4096):
        raise ValueError("config.json: vision_output_dim must equal projector_output_dim")
    rope = vision.get("rope_parameters") or {}
    encoder = Llama4ViTSpec(
        embed_dim=vision["hidden_size"],
        num_layers=vision["num_hidden_layers"],
        num_heads=vision["num_attention_heads"],
        intermediate_dim=vision["intermediate_size"],
        patch_size=vision.get("patch_size", 14),
        tile_size=vision.get("image_size", 336),
        projector_dim=vision.get("projector_input_dim", 4096),
        projector_output_dim=vision.get("projector_output_dim", 4096),
        pixel_shuffle_ratio=float(vision.get("pixel_shuffle_ratio", 0.5)),
        rope_base=float(rope.get("rope_theta", vision.get("rope_theta", 10_000.0))),
        in_channels=vision.get("num_channels", 3),
    )
    return EarlyFusionSpec(
        decoder=spec_from_hf_config(cfg["text_config"]),
        encoder=encoder,
        image_token_id=cfg.get("image_token_index", 200_092),
        family="LLAMA4",
    )
