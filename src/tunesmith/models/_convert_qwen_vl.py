"""Qwen2.5-VL (``QWEN2_5_VL``) and Qwen3-VL (``QWEN3_VL``): HF
``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration`` <-> native.

A rename (bit-exact both ways) except the ViT's fused ``attn.qkv [3d, d]`` (rows: all q,
then k, then v), which is split into ``attn.{q,k,v}_proj`` and concatenated back. The text
layers use the Qwen2 rules of ``convert_weights`` (Qwen3-VL's add ``q_norm`` / ``k_norm``).
Qwen2.5-VL files written by ``save_pretrained`` (and the hub's) hold ``model.*`` (text),
``visual.*``, ``lm_head.weight``; transformers 5's in-memory names are
``model.language_model.*``, ``model.visual.*`` (``layout="module"``), which Qwen3-VL's files
use too. Qwen3-VL's ViT: ``mlp.linear_fc{1,2}``, LayerNorms with biases, ``pos_embed``,
``merger.{norm,linear_fc1,linear_fc2}`` and ``deepstack_merger_list.K.*`` (native
``encoder.deepstack_mergers.K.{norm,fc1,fc2}``).

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
_TEXT3 = {
    **_TEXT,
    "self_attn.q_norm.weight": "attn.q_norm.scale",
    "self_attn.k_norm.weight": "attn.k_norm.scale",
}
_VIT3 = {
    "attn.proj": "attn.output_proj",
    "mlp.linear_fc1": "mlp.w1",
    "mlp.linear_fc2": "mlp.w2",
    "norm1": "sa_norm",
    "norm2": "mlp_norm",
}
_MERGER3 = {"norm": "norm", "linear_fc1": "fc1", "linear_fc2": "fc2"}
_VIT_TOP3 = {
    "patch_embed.proj": "patch_embed",
    "pos_embed": "pos_embed",
    **{f"merger.{k}": f"merger.{v}" for k, v in _MERGER3.items()},
}


def _family(cfg: Mapping[str, Any]) -> str:
    return "QWEN3_VL" if cfg.get("model_type") == "qwen3_vl" else "QWEN2_5_VL"


def _tables(family: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(text layer, ViT layer, ViT top-level) renames of a family."""
    if family == "QWEN3_VL":
        return _TEXT3, _VIT3, _VIT_TOP3
    return _TEXT, _VIT, _VIT_TOP


def _cfg(hf_config: Any) -> Mapping[str, Any]:
    if hf_config is None:
        raise ValueError("QWEN2_5_VL / QWEN3_VL conversion needs the Hugging Face config.json")
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
    family = _family(cfg)
    text_t, vit_t, top_t = _tables(family)
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
            d = re.match(r"^deepstack_merger_list\.(\d+)\.(.+)$", rest)
            if m:
                sub = _rename(m.group(2), vit_t)
                name = sub and f"encoder.layers.{m.group(1)}.{sub}"
            elif d and family == "QWEN3_VL":
                sub = _rename(d.group(2), _MERGER3)
                name = sub and f"encoder.deepstack_mergers.{d.group(1)}.{sub}"
            elif (sub := _rename(rest, top_t)) is not None:
                name = "encoder." + sub
        elif key == "lm_head.weight":
            if _tied(cfg):
                continue
            name = "decoder.output.weight"
        else:
            rest = rest.removeprefix("language_model.")
            m = re.match(r"^layers\.(\d+)\.(.+)$", rest)
            if m:
                sub = _rename(m.group(2), text_t)
                name = sub and f"decoder.layers.{m.group(1)}.{sub}"
            elif rest == "embed_tokens.weight":
                name = "decoder.tok_embeddings.weight"
            elif rest == "norm.weight":
                name = "decoder.norm.scale"
        if name is None:
            raise KeyError(f"Unexpected key {key!r} in a {family} Hugging Face checkpoint.")
        out[name] = value
    return out


def qwen_vl_native_to_hf(
    state_dict: Mapping[str, Tensor], hf_config: Any, layout: str = "file"
) -> dict[str, Tensor]:
    """Inverse of :func:`qwen_vl_hf_to_native` (``layout``: ``"file"`` or ``"module"``; the
    same for Qwen3-VL)."""
    if layout not in ("file", "module"):
        raise ValueError(f"layout must be 'file' or 'module', got {layout!r}")
    family = _family(_cfg(hf_config))
    module = layout == "module" or family == "QWEN3_VL"
    lm = "model.language_model." if module else "model."
    vm = "model.visual." if module else "visual."
    text_t, vit_t, top_t = _tables(family)
    text = {v: k for k, v in text_t.items()}
    vit = {v: k for k, v in vit_t.items()}
    vit_top = {v: k for k, v in top_t.items()}
    merger3 = {v: k for k, v in _MERGER3.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        name = None
        m = re.match(r"^decoder\.layers\.(\d+)\.(.+)$", key)
        e = re.match(r"^encoder\.layers\.(\d+)\.(.+)$", key)
        d = re.match(r"^encoder\.deepstack_mergers\.(\d+)\.(.+)$", key)
        if d and family == "QWEN3_VL":
            sub = _rename(d.group(2), merger3)
            name = sub and f"{vm}deepstack_merger_list.{d.group(1)}.{sub}"
        elif m:
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
            raise KeyError(f"Native key {key!r} has no {family} Hugging Face equivalent.")
        out[name] = value
    for (layer, suffix), parts in qkv.items():
        if suffix not in ("weight", "bias"):
            raise ValueError(
                f"encoder layer {layer}: q/k/v adapters ({suffix}) cannot be written for the "
                "ViT's fused qkv (PEFT / HF format); use encoder_trainable='frozen' or 'full'"
            )
        if set(parts) != set(_QKV):
            raise KeyError(f"{family}: encoder layer {layer} lacks one of q/k/v {suffix}")
        out[f"{vm}blocks.{layer}.attn.qkv.{suffix}"] = torch.cat([parts[p] for p in _QKV])
    return out


_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def qwen_vl_spec_from_hf_config(config: Any) -> EarlyFusionSpec:
    """An ``EarlyFusionSpec`` from a ``Qwen2_5_VLConfig`` or ``Qwen3VLConfig`` (dict or
    ``PretrainedConfig``)."""
    cfg = _cfg(config)
    family = _family(cfg)
    qwen3 = family == "QWEN3_VL"
    text, vision = cfg["text_config"], cfg["vision_config"]
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta", 5e6 if qwen3 else 1e6))
    if rope.get("rope_type", "default") not in ("default", "mrope"):
        raise ValueError(f"config.json: rope_type {rope.get('rope_type')!r} is not supported")
    n_heads = text["num_attention_heads"]
    decoder = ModelSpec(
        family=family,
        vocab_size=text["vocab_size"],
        num_layers=text["num_hidden_layers"],
        num_heads=n_heads,
        num_kv_heads=text.get("num_key_value_heads") or n_heads,
        embed_dim=text["hidden_size"],
        intermediate_dim=text["intermediate_size"],
        max_seq_len=text.get("max_position_embeddings", 128_000),
        head_dim=text.get("head_dim") if qwen3 else None,
        rope_base=float(theta),
        norm_eps=text.get("rms_norm_eps", 1e-6),
        qkv_bias=bool(text.get("attention_bias", False)) if qwen3 else True,
        tie_embeddings=_tied(cfg),
        qk_norm=qwen3,
        mrope_section=tuple(rope.get("mrope_section", (24, 20, 20) if qwen3 else (16, 24, 24))),
        # transformers' Qwen3-VL always interleaves (it ignores the flag)
        mrope_interleaved=qwen3,
    )
    vrope = vision.get("rope_parameters") or {}
    act = vision.get("hidden_act", "gelu_pytorch_tanh" if qwen3 else "silu")
    common = dict(
        embed_dim=vision["hidden_size"],
        num_layers=vision["depth"],
        num_heads=vision["num_heads"],
        intermediate_dim=vision["intermediate_size"],
        patch_size=vision.get("patch_size", 16 if qwen3 else 14),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        in_channels=vision.get("in_channels", 3),
        activation=_ACTIVATIONS.get(act, act),
        rope_base=float(vrope.get("rope_theta", 10_000.0)),
    )
    if qwen3:
        encoder = QwenViTSpec(
            **common,
            full_attention_layers=(),
            window_size=None,
            norm="layer",
            gated_mlp=False,
            patch_bias=True,
            num_position_embeddings=vision.get("num_position_embeddings", 2304),
            deepstack_layers=tuple(vision.get("deepstack_visual_indexes", (8, 16, 24))),
        )
    else:
        encoder = QwenViTSpec(
            **common,
            full_attention_layers=tuple(vision.get("fullatt_block_indexes", ())),
            window_size=vision.get("window_size", 112),
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
    return EarlyFusionSpec(decoder=decoder, encoder=encoder, family=family, **ids)
