"""Llama 3.2 Vision (``LLAMA3_VISION``): HF ``MllamaForConditionalGeneration`` <-> native.

A pure rename (bit-exact both ways) except two structural facts:

* HF numbers the text layers ``0 .. S + C - 1`` with the cross-attention layers at
  ``text_config.cross_attention_layers``; native numbers the ``S`` self-attention layers and
  keeps each cross-attention layer as ``fusion_layer`` of the self-attention layer after it.
* HF's ``embed_tokens [vocab + 8, d]`` is split into ``tok_embeddings.weight [vocab, d]`` and
  ``tok_embeddings.fusion_embedding.weight [8, d]`` (and concatenated back).

Also reads the HF config into a :class:`~tunesmith.models.vision_spec.DeepFusionSpec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tunesmith.models._hf_config import _rope
from tunesmith.models.spec import ModelSpec
from tunesmith.models.vision_spec import DeepFusionSpec, TiledViTSpec

__all__ = ["mllama_hf_to_native", "mllama_native_to_hf", "mllama_spec_from_hf_config"]

_TEXT = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.output_proj",
    "mlp.gate_proj": "mlp.w1",
    "mlp.down_proj": "mlp.w2",
    "mlp.up_proj": "mlp.w3",
    "input_layernorm": "sa_norm",
    "post_attention_layernorm": "mlp_norm",
}
_CROSS = {
    "cross_attn.q_proj": "attn.q_proj",
    "cross_attn.k_proj": "attn.k_proj",
    "cross_attn.v_proj": "attn.v_proj",
    "cross_attn.o_proj": "attn.output_proj",
    "cross_attn.q_norm": "attn.q_norm",
    "cross_attn.k_norm": "attn.k_norm",
    "mlp.gate_proj": "mlp.w1",
    "mlp.down_proj": "mlp.w2",
    "mlp.up_proj": "mlp.w3",
    "input_layernorm": "ca_norm",
    "post_attention_layernorm": "mlp_norm",
    "cross_attn_attn_gate": "ca_scale.scale",
    "cross_attn_mlp_gate": "mlp_scale.scale",
}
_VIT_LAYER = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.output_proj",
    "mlp.fc1": "mlp.w1",
    "mlp.fc2": "mlp.w2",
    "input_layernorm": "sa_norm",
    "post_attention_layernorm": "mlp_norm",
    "gate_attn": "sa_scale.scale",
    "gate_ffn": "mlp_scale.scale",
}
_VIT_TOP = {
    "patch_embedding.weight": "conv.weight",
    "class_embedding": "cls_token_embedding.weight",
    "gated_positional_embedding.embedding": "token_pos_embedding.local_token_positional_embedding",
    "gated_positional_embedding.tile_embedding.weight": (
        "token_pos_embedding.global_token_positional_embedding"
    ),
    "gated_positional_embedding.gate": "token_pos_embedding.gate",
    "pre_tile_positional_embedding.embedding.weight": "pre_tile_pos_embed.embedding",
    "pre_tile_positional_embedding.gate": "pre_tile_pos_embed.gate",
    "post_tile_positional_embedding.embedding.weight": "post_tile_pos_embed.embedding",
    "post_tile_positional_embedding.gate": "post_tile_pos_embed.gate",
    "layernorm_pre.weight": "ln_pre.weight",
    "layernorm_pre.bias": "ln_pre.bias",
    "layernorm_post.weight": "ln_post.weight",
    "layernorm_post.bias": "ln_post.bias",
}
_RMS = {"sa_norm", "mlp_norm", "ca_norm", "q_norm", "k_norm"}


def _cfg(hf_config: Any) -> Mapping[str, Any]:
    if hf_config is None:
        raise ValueError("LLAMA3_VISION conversion needs the Hugging Face config.json")
    return hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()


def _layer_maps(cfg: Mapping[str, Any]) -> tuple[dict[int, int], dict[int, int]]:
    """HF text layer index -> native self-attention index, and HF cross index -> the native
    layer that holds it as ``fusion_layer``."""
    text = cfg["text_config"]
    cross = set(text.get("cross_attention_layers") or [])
    self_map, cross_map, n_self = {}, {}, 0
    for j in range(text["num_hidden_layers"]):
        if j in cross:
            cross_map[j] = n_self
        else:
            self_map[j] = n_self
            n_self += 1
    if any(i >= n_self for i in cross_map.values()):
        raise ValueError("config.json: a cross-attention layer is the last text layer")
    return self_map, cross_map


def _rename(rest: str, table: Mapping[str, str], norms: bool) -> str | None:
    for hf in sorted(table, key=len, reverse=True):
        if rest == hf or rest.startswith(hf + "."):
            native, suffix = table[hf], rest[len(hf) + 1 :]
            if norms and native.split(".")[-1] in _RMS and suffix == "weight":
                suffix = "scale"
            return f"{native}.{suffix}" if suffix else native
    return None


def _strip(key: str) -> tuple[str, str]:
    """``(prefix, rest)`` where prefix is how this file spells the top-level modules."""
    for prefix in ("model.", ""):
        for part in ("language_model.", "vision_model.", "multi_modal_projector."):
            if key.startswith(prefix + part):
                return prefix, key[len(prefix) :]
    return "", key


def mllama_hf_to_native(state_dict: Mapping[str, Tensor], hf_config: Any) -> dict[str, Tensor]:
    """HF ``MllamaForConditionalGeneration`` state dict -> native keys."""
    cfg = _cfg(hf_config)
    vocab = cfg["text_config"]["vocab_size"]
    self_map, cross_map = _layer_maps(cfg)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        _, rest = _strip(key)
        name = None
        if rest == "language_model.lm_head.weight":
            name = "decoder.output.weight"
        elif rest.startswith("language_model."):
            rest = rest[len("language_model.") :].removeprefix("model.")
            m = re.match(r"^layers\.(\d+)\.(.+)$", rest)
            if m:
                j = int(m.group(1))
                if j in cross_map:
                    sub = _rename(m.group(2), _CROSS, True)
                    name = sub and f"decoder.layers.{cross_map[j]}.fusion_layer.{sub}"
                else:
                    sub = _rename(m.group(2), _TEXT, True)
                    name = sub and f"decoder.layers.{self_map[j]}.{sub}"
            elif rest == "embed_tokens.weight":
                out["decoder.tok_embeddings.weight"] = value[:vocab]
                out["decoder.tok_embeddings.fusion_embedding.weight"] = value[vocab:]
                continue
            elif rest == "norm.weight":
                name = "decoder.norm.scale"
        elif rest.startswith("vision_model."):
            rest = rest[len("vision_model.") :]
            m = re.match(r"^(transformer|global_transformer)\.layers\.(\d+)\.(.+)$", rest)
            if m:
                where = "clip" if m.group(1) == "transformer" else "projection"
                sub = _rename(m.group(3), _VIT_LAYER, False)
                name = sub and f"encoder.{where}.layers.{m.group(2)}.{sub}"
            elif rest in _VIT_TOP:
                name = f"encoder.clip.{_VIT_TOP[rest]}"
        elif rest.startswith("multi_modal_projector."):
            name = "encoder.projection.output." + rest[len("multi_modal_projector.") :]
        elif key == "lm_head.weight" or rest == "lm_head.weight":
            name = "decoder.output.weight"
        if name is None:
            raise KeyError(f"Unexpected key {key!r} in an LLAMA3_VISION Hugging Face checkpoint.")
        out[name] = value
    return out


def _invert(table: Mapping[str, str], norms: bool) -> dict[str, str]:
    inv = {}
    for hf, native in table.items():
        inv[native] = hf
        if norms and native.split(".")[-1] in _RMS:
            inv[native + ".scale"] = hf + ".weight"
    return inv


def mllama_native_to_hf(
    state_dict: Mapping[str, Tensor], hf_config: Any, layout: str = "file"
) -> dict[str, Tensor]:
    """Inverse of :func:`mllama_hf_to_native`.

    ``layout="file"``: the keys ``save_pretrained`` writes and the hub's files hold
    (``language_model.model.*``, ``language_model.lm_head.weight``, ``vision_model.*``,
    ``multi_modal_projector.*``); ``"module"``: transformers 5's in-memory names
    (``model.language_model.*``, ``model.vision_model.*``, ``lm_head.weight``).
    """
    if layout not in ("file", "module"):
        raise ValueError(f"layout must be 'file' or 'module', got {layout!r}")
    prefix = "model." if layout == "module" else ""
    cfg = _cfg(hf_config)
    self_map, cross_map = _layer_maps(cfg)
    self_inv = {v: k for k, v in self_map.items()}
    cross_inv = {v: k for k, v in cross_map.items()}
    text, cross, vit = _invert(_TEXT, True), _invert(_CROSS, True), _invert(_VIT_LAYER, False)
    vit_top = {v: k for k, v in _VIT_TOP.items()}
    lm = "model.language_model." if layout == "module" else "language_model.model."
    vm = f"{prefix}vision_model."
    lm_head = "lm_head.weight" if layout == "module" else "language_model.lm_head.weight"
    out: dict[str, Tensor] = {}
    embed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = None
        m = re.match(r"^decoder\.layers\.(\d+)\.(fusion_layer\.)?(.+)$", key)
        if m:
            i = int(m.group(1))
            table, j = (cross, cross_inv.get(i)) if m.group(2) else (text, self_inv.get(i))
            sub = _rename(m.group(3), table, False)
            if sub is not None and j is not None:
                name = f"{lm}layers.{j}.{sub}"
        elif key in (
            "decoder.tok_embeddings.weight",
            "decoder.tok_embeddings.fusion_embedding.weight",
        ):
            embed[key] = value
            continue
        elif key == "decoder.norm.scale":
            name = f"{lm}norm.weight"
        elif key == "decoder.output.weight":
            name = lm_head
        elif key.startswith("encoder.projection.output."):
            name = f"{prefix}multi_modal_projector." + key[len("encoder.projection.output.") :]
        else:
            m = re.match(r"^encoder\.(clip|projection)\.layers\.(\d+)\.(.+)$", key)
            if m:
                where = "transformer" if m.group(1) == "clip" else "global_transformer"
                sub = _rename(m.group(3), vit, False)
                name = sub and f"{vm}{where}.layers.{m.group(2)}.{sub}"
            elif key.startswith("encoder.clip.") and key[13:] in vit_top:
                name = vm + vit_top[key[13:]]
        if name is None:
            raise KeyError(f"Native key {key!r} has no LLAMA3_VISION Hugging Face equivalent.")
        out[name] = value
    if embed:
        parts = [embed.get("decoder.tok_embeddings.weight")]
        parts.append(embed.get("decoder.tok_embeddings.fusion_embedding.weight"))
        if any(p is None for p in parts):
            raise KeyError("LLAMA3_VISION: both token and fusion embeddings are needed")
        out[f"{lm}embed_tokens.weight"] = torch.cat(parts)  # type: ignore[arg-type]
    return out


def mllama_spec_from_hf_config(config: Any) -> DeepFusionSpec:
    """A ``DeepFusionSpec`` from an ``MllamaConfig`` (dict or ``PretrainedConfig``)."""
    cfg = _cfg(config)
    text, vision = cfg["text_config"], cfg["vision_config"]
    self_map, cross_map = _layer_maps(cfg)
    theta, scaling = _rope(text)
    n_heads = text["num_attention_heads"]
    decoder = ModelSpec(
        family="LLAMA3_VISION",
        vocab_size=text["vocab_size"],
        num_layers=len(self_map),
        num_heads=n_heads,
        num_kv_heads=text.get("num_key_value_heads") or n_heads,
        embed_dim=text["hidden_size"],
        intermediate_dim=text["intermediate_size"],
        max_seq_len=text.get("max_position_embeddings", 131_072),
        rope_base=theta,
        rope_scaling=scaling,
        norm_eps=text.get("rms_norm_eps", 1e-5),
        tie_embeddings=bool(text.get("tie_word_embeddings", False)),
    )
    ratios = tuple(tuple(r) for r in vision["supported_aspect_ratios"])
    encoder = TiledViTSpec(
        embed_dim=vision["hidden_size"],
        num_layers=vision["num_hidden_layers"],
        num_global_layers=vision["num_global_layers"],
        num_heads=vision["attention_heads"],
        intermediate_dim=vision["intermediate_size"],
        patch_size=vision["patch_size"],
        tile_size=vision["image_size"],
        max_num_tiles=vision["max_num_tiles"],
        out_indices=tuple(vision["intermediate_layers_indices"]),
        supported_aspect_ratios=ratios,  # type: ignore[arg-type]
        in_channels=vision.get("num_channels", 3),
        norm_eps=vision.get("norm_eps", 1e-5),
        activation={"gelu": "gelu"}.get(vision.get("hidden_act", "gelu"), "unsupported"),
    )
    if encoder.activation == "unsupported":
        raise ValueError(f"config.json: vision hidden_act {vision.get('hidden_act')!r}")
    return DeepFusionSpec(
        decoder=decoder, encoder=encoder, fusion_layers=tuple(sorted(set(cross_map.values())))
    )
