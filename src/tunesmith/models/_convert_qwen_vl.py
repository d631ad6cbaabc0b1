"""Qwen2.5-VL (``QWEN2_5_VL``): HF ``Qwen2_5_VLForConditionalGeneration`` <-> native.

A rename (bit-exact both ways) except the ViT's fused ``attn.qkv [3d, d]`` (rows: all q,
then k, then v), which is split into ``attn.{q,k,v}_proj`` and concatenated back. The text
layers use the Qwen2 rules of ``convert_weights``. Files written by ``save_pretrained`` (and
the hub's) hold ``model.*`` (text), ``visual.*``, ``lm_head.weight``; transformers 5's
in-memory names are ``model.language_model.*``, ``model.visual.*`` (``layout="module"``).

Also reads the HF config into an :class:`~tunesmith.models.vision_spec.EarlyFusionSpec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tunesmith.models.spec import ModelSpec
from tunesmith.models.vision_spec import EarlyFusionSpec, QwenViTSpec

__all__ = ["qwen_vl_hf_to_native", "qwen_vl_native_to_hf", "qwen_vl_spec_from_hf_config"]

_TEXT = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.output_proj",
    "mlp.gate_proj": "mlp.w1",
    "mlp.down_proj": "mlp.w2",
    "mlp.up_proj": "mlp.w3",
    "input_layernorm.weight": "sa_norm.scale",
    "post_attention_layernorm.weight": "mlp_norm.scale",
}
_VIT = {
    "attn.proj": "attn.output_proj",
    "mlp.gate_proj": "mlp.w1",
    "mlp.down_proj": "mlp.w2",
    "mlp.up_proj": "mlp.w3",
    "norm1.weight": "sa_norm.scale",
    "norm2.weight": "mlp_norm.scale",
}
_VIT_TOP = {
    "patch_embed.proj": "patch_embed",
    "merger.ln_q.weight": "merger.norm.scale",
    "merger.mlp.0": "merger.fc1",
    "merger.mlp.2": "merger.fc2",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def _cfg(hf_config: Any) -> Mapping[str, Any]:
    if hf_config is None:
        raise ValueError("QWEN2_5_VL conversion needs the Hugging Face config.json")
    return hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()


def _tied(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("tie_word_embeddings", cfg["text_config"].get("tie_word_embeddings")))


def _rename(rest: str, table: Mapping[str, str]) -> str | None:
    for hf, native in table.items():
        if rest == hf:
            return native
        if rest.startswith(hf + "."):
            return native + rest[len(hf) :]
    return None


def qwen_vl_hf_to_native(state_dict: Mapping[str, Tensor], hf_config: Any) -> dict[str, Tensor]:
    """HF state dict (file or module layout) -> native keys (``decoder.*``, ``encoder.*``)."""
    cfg = _cfg(hf_config)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = None
        rest = key.removeprefix("model.")
        if rest.startswith("visual."):
            rest = rest[len("visual.") :]
            m = re.match(r"^blocks\.(\d+)\.(.+)$", rest)
            if m and m.group(2).startswith("attn.qkv."):
                suffix = m.group(2)[len("attn.qkv.") :]
                if suffix not in ("weight", "bias"):
                    raise ValueError(
                        f"{key!r}: an adapter on the ViT's fused qkv has no native form (native "
                        "q/k/v are separate); train the ViT without attention adapters"
                    )
                for part, chunk in zip(_QKV, value.chunk(3, dim=0), strict=True):
                    out[f"encoder.layers.{m.group(1)}.attn.{part}.{suffix}"] = chunk
                continue
            if m:
                sub = _rename(m.group(2), _VIT)
                name = sub and f"encoder.layers.{m.group(1)}.{sub}"
            elif (sub := _rename(rest, _VIT_TOP)) is not None:
                name = "encoder." + sub
        elif key == "lm_head.weight":
            if _tied(cfg):
                continue
            name = "decoder.output.weight"
        else:
            rest = rest.removeprefix("language_model.")
            m = re.match(r"^layers\.(\d+)\.(.+)$", rest)
            if m:
                sub = _rename(m.group(2), _TEXT)
                name = sub and f"decoder.layers.{m.group(1)}.{sub}"
            elif rest == "embed_tokens.weight":
                name = "decoder.tok_embeddings.weight"
            elif rest == "norm.weight":
                name = "decoder.norm.scale"
        if name is None:
            raise KeyError(f"Unexpected key {key!r} in a QWEN2_5_VL Hugging Face checkpoint.")
        out[name] = value
    return out


def qwen_vl_native_to_hf(
    state_dict: Mapping[str, Tensor], hf_config: Any, layout: str = "file"
) -> dict[str, Tensor]:
    """Inverse of :func:`qwen_vl_hf_to_native` (``layout``: ``"file"`` or ``"module"``)."""
    if layout not in ("file", "module"):
        raise ValueError(f"layout must be 'file' or 'module', got {layout!r}")
    _cfg(hf_config)
    lm = "model.language_model." if layout == "module" else "model."
    vm = "model.visual." if layout == "module" else "visual."
    text = {v: k for k, v in _TEXT.items()}
    vit = {v: k for k, v in _VIT.items()}
    vit_top = {v: k for k, v in _VIT_TOP.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        name = None
        m = re.match(r"^decoder\.layers\.(\d+)\.(.+)$", key)
        e = re.match(r"^encoder\.layers\.(\d+)\.(.+)$", key)
        if m:
            sub = _rename(m.group(2), text)
            name = sub and f"{lm}layers.{m.group(1)}.{sub}"
        elif e and (q := re.match(r"^attn\.([qkv]_proj)\.(.+)$", e.group(2))):
            qkv.setdefault((e.group(1), q.group(2)), {})[q.group(1)] = value
            continue
        elif e:
            sub = _rename(e.group(2), vit)
            name = sub and f"{vm}blocks.{e.group(1)}.{sub}"
        elif key == "decoder.tok_embeddings.weight":
            name = f"{lm}embed_tokens.weight"
        elif key == "decoder.norm.scale":
            name = f"{lm}norm.weight"
        elif key == "decoder.output.weight":
            name = "lm_head.weight"
        elif key.startswith("encoder.") and (sub := _rename(key[len("encoder.") :], vit_top)):
            name = vm + sub
        if name is None:
            raise KeyError(f"Native key {key!r} has no QWEN2_5_VL Hugging Face equivalent.")
        out[name] = value
    for (layer, suffix), parts in qkv.items():
        if suffix not in ("weight", "bias"):
            raise ValueError(
                f"encoder layer {layer}: q/k/v adapters ({suffix}) cannot be written for the "
                "ViT's fused qkv (PEFT / HF format); use encoder_trainable='frozen' or 'full'"
            )
        if set(parts) != set(_QKV):
            raise KeyError(f"QWEN2_5_VL: encoder layer {layer} lacks one of q/k/v {suffix}")
        out[f"{vm}blocks.{layer}.attn.qkv.{suffix}"] = torch.cat([parts[p] for p in _QKV])
    return out


def qwen_vl_spec_from_hf_config(config: Any) -> EarlyFusionSpec:
    """An ``EarlyFusionSpec`` from a ``Qwen2_5_VLConfig`` (dict or ``PretrainedConfig``)."""
    cfg = _cfg(config)
    text, vision = cfg["text_config"], cfg["vision_config"]
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))
    if rope.get("rope_type", "default") not in ("default", "mrope"):
        raise ValueError(f"config.json: rope_type {rope.get('rope_type')!r} is not supported")
    n_heads = text["num_attention_heads"]
    decoder = ModelSpec(
        family="QWEN2_5_VL",
        vocab_size=text["vocab_size"],
        num_layers=text["num_hidden_layers"],
        num_heads=n_heads,
        num_kv_heads=text.get("num_key_value_heads") or n_heads,
        embed_dim=text["hidden_size"],
        intermediate_dim=text["intermediate_size"],
        max_seq_len=text.get("max_position_embeddings", 128_000),
        rope_base=float(theta),
        norm_eps=text.get("rms_norm_eps", 1e-6),
        qkv_bias=True,
        tie_embeddings=_tied(cfg),
        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
    )
    vrope = vision.get("rope_parameters") or {}
    encoder = QwenViTSpec(
        embed_dim=vision["hidden_size"],
        num_layers=vision["depth"],
        num_heads=vision["num_heads"],
        intermediate_dim=vision["intermediate_size"],
        full_attention_layers=tuple(vision.get("fullatt_block_indexes", ())),
        patch_size=vision.get("patch_size", 14),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        window_size=vision.get("window_size", 112),
        in_channels=vision.get("in_channels", 3),
        activation=vision.get("hidden_act", "silu"),
        rope_base=float(vrope.get("rope_theta", 10_000.0)),
    )
    if vision.get("out_hidden_size", text["hidden_size"]) != text["hidden_size"]:
        raise ValueError("config.json: vision out_hidden_size must equal the text hidden_size")
    ids = {
        k: cfg[k]
        for k in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        )
        if cfg.get(k) is not None
    }
    return EarlyFusionSpec(decoder=decoder, encoder=encoder, **ids)
