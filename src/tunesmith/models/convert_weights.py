"""State-dict conversion between native keys and Hugging Face / Meta / torchtune layouts.

Native keys are torchtune's (see docs/architecture.md); the native q/k layout is Hugging
Face's rotate-half layout, so HF <-> native is a pure rename (plus Phi-3's fused projections)
and bit-exact. Meta and torchtune-native Llama-style checkpoints store q/k in the
interleaved RoPE layout and are permuted here. Keys ending in LoRA / DoRA suffixes
(``.lora_a.weight``, ``.lora_b.weight``, ``.magnitude``) are renamed like their base module.

``model_type`` strings are torchtune's: LLAMA2, LLAMA3, LLAMA3_2, MISTRAL, GEMMA, GEMMA2,
GEMMA3, GEMMA4 (see ``_convert_gemma4``), SMOLLM3, OLMO2, OLMO3, GRANITE and GRANITE4 (no torchtune layout: their q/k are never permuted), PHI3_MINI, PHI4, QWEN2, QWEN3, QWEN3_MOE, MIXTRAL and GPT_OSS (experts stacked into grouped tensors,
see ``_convert_moe``), REWARD (a Llama / Mistral classifier with a ``score`` head),
LLAMA4 (text-only ``Llama4ForCausalLM`` keys here; ``Llama4ForConditionalGeneration`` keys,
with the vision encoder, in ``_convert_llama4``), LLAMA3_VISION (HF
``MllamaForConditionalGeneration``, see ``_convert_vision``) and
QWEN2_5_VL / QWEN3_VL (HF ``Qwen2_5_VLForConditionalGeneration`` /
``Qwen3VLForConditionalGeneration``, see ``_convert_qwen_vl``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from tunesmith.models._convert_fused import attn_sizes as _attn_sizes
from tunesmith.models._convert_fused import fuse_parts as _fuse
from tunesmith.models._convert_fused import split_fused as _split_fused
from tunesmith.models._convert_gemma4 import (
    GEMMA4_LAYER,
    GEMMA4_NORMS,
    GEMMA4_TOP,
    gemma4_from_hf_layout,
    gemma4_native_extras,
    gemma4_to_hf_layout,
)
from tunesmith.models._convert_granite4 import granite4_hf_to_llama_layout as _g4_in
from tunesmith.models._convert_granite4 import granite4_llama_to_hf_layout as _g4_out
from tunesmith.models._convert_mistral3 import is_mistral3, mistral3_layout, mistral3_text_keys
from tunesmith.models._convert_moe import (
    MOE_FAMILIES,
    hf_experts_to_native,
    native_experts_to_hf,
)
from tunesmith.models._hf_config import spec_from_hf_config
from tunesmith.models._peft_fused import FUSED_PARTS

__all__ = [
    "MODEL_TYPES",
    "VISION_MODEL_TYPES",
    "hf_to_native",
    "native_to_hf",
    "meta_to_native",
    "native_to_meta",
    "torchtune_to_native",
    "native_to_torchtune",
    "permute_meta_to_hf",
    "permute_hf_to_meta",
    "spec_from_hf_config",
    "ties_embeddings",
]

_LAYER_HF = {
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
    "post_attention_layernorm": "mlp_norm",
}
_LAYER_GEMMA2 = {
    **_LAYER_HF,
    "post_attention_layernorm": "sa_scale",
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "mlp_scale",
}
#: OLMo 2: post-norms only (no input / pre-feed-forward norms)
_LAYER_OLMO2 = {
    k: v
    for k, v in _LAYER_GEMMA2.items()
    if k not in ("input_layernorm", "pre_feedforward_layernorm")
}
_LAYER_LLAMA4 = {
    **{k: v for k, v in _LAYER_HF.items() if not k.startswith("mlp.")},
    "feed_forward.gate_proj": "mlp.w1",
    "feed_forward.down_proj": "mlp.w2",
    "feed_forward.up_proj": "mlp.w3",
    "feed_forward.shared_expert.gate_proj": "mlp.shared_expert.w1",
    "feed_forward.shared_expert.down_proj": "mlp.shared_expert.w2",
    "feed_forward.shared_expert.up_proj": "mlp.shared_expert.w3",
}
_TOP_HF = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}
_TOP_REWARD = {**_TOP_HF, "score": "output"}
_FUSED_PHI3 = FUSED_PARTS  # Hugging Face fused module -> native parts (Phi-3 / Phi-4-mini)

#: model_type -> (layer module map, top-level module map, has fused Phi-3 projections,
#: torchtune stores q/k interleaved)
_RULES: dict[str, tuple[dict[str, str], dict[str, str], bool, bool]] = {
    "LLAMA2": (_LAYER_HF, _TOP_HF, False, True),
    "LLAMA3": (_LAYER_HF, _TOP_HF, False, True),
    "LLAMA3_2": (_LAYER_HF, _TOP_HF, False, True),
    "MISTRAL": (_LAYER_HF, _TOP_HF, False, True),
    "GEMMA": (_LAYER_HF, _TOP_HF, False, True),
    "GEMMA2": (_LAYER_GEMMA2, _TOP_HF, False, True),
    "GEMMA3": (_LAYER_GEMMA2, _TOP_HF, False, False),
    "GEMMA4": (GEMMA4_LAYER, GEMMA4_TOP, False, False),
    "SMOLLM3": (_LAYER_HF, _TOP_HF, False, False),
    "OLMO2": (_LAYER_OLMO2, _TOP_HF, False, False),
    "OLMO3": (_LAYER_OLMO2, _TOP_HF, False, False),
    "GRANITE": (_LAYER_HF, _TOP_HF, False, False),
    "GRANITE4": (_LAYER_HF, _TOP_HF, False, False),  # fused shared_mlp: _convert_granite4
    "PHI3_MINI": (_LAYER_HF, _TOP_HF, True, False),
    "PHI4": (_LAYER_HF, _TOP_HF, True, False),
    "QWEN2": (_LAYER_HF, _TOP_HF, False, False),
    "QWEN3": (_LAYER_HF, _TOP_HF, False, False),
    "QWEN3_MOE": (_LAYER_HF, _TOP_HF, False, False),
    "MIXTRAL": (_LAYER_HF, _TOP_HF, False, True),
    "GPT_OSS": (_LAYER_HF, _TOP_HF, False, False),
    "LLAMA4": (_LAYER_LLAMA4, _TOP_HF, False, False),
    "REWARD": (_LAYER_HF, _TOP_REWARD, False, True),
}
MODEL_TYPES = tuple(_RULES)
_ALIASES = {
    "LLAMA3_1": "LLAMA3",
    "LLAMA3_3": "LLAMA3",
    "CODE_LLAMA2": "LLAMA2",
    "QWEN2_5": "QWEN2",
    "SMOLLM2": "LLAMA3_2",
}
_NORMS = {"sa_norm", "mlp_norm", "sa_scale", "mlp_scale", "q_norm", "k_norm", "norm"}
_NORMS |= set(GEMMA4_NORMS)
_TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3_text", "gemma4", "gemma4_text")
_DROP = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^rope\.freqs$")
_LAYER_RE = re.compile(r"^(model\.)?layers\.(\d+)\.(.+)$")


def _model_type(model_type: Any) -> str:
    name = getattr(model_type, "name", model_type)
    key = str(name).upper()
    key = _ALIASES.get(key, key)
    if key not in _RULES:
        raise ValueError(
            f"checkpointer.model_type: unknown model type {name!r}; "
            f"choose one of {', '.join(MODEL_TYPES)}."
        )
    return key


#: vision-language model types, converted by their own modules (``_convert_vision``)
VISION_MODEL_TYPES = ("LLAMA3_VISION", "QWEN2_5_VL", "QWEN3_VL")


def _vision_type(model_type: Any) -> str:
    return str(getattr(model_type, "name", model_type)).upper()


def _is_vision(model_type: Any) -> bool:
    return _vision_type(model_type) in VISION_MODEL_TYPES


def _llama4_vision(model_type: Any, state_dict: Mapping[str, Tensor]) -> bool:
    """``LLAMA4`` keys of the model with its vision encoder (``language_model.*`` /
    ``decoder.*``, see ``_convert_llama4``), not of the text-only ``Llama4ForCausalLM``."""
    from tunesmith.models._convert_llama4 import is_llama4_vision_state_dict

    return _vision_type(model_type) == "LLAMA4" and is_llama4_vision_state_dict(state_dict)


def _cfg(hf_config: Any) -> Mapping[str, Any]:
    if hf_config is None:
        return {}
    if isinstance(hf_config, Mapping):
        return hf_config
    return hf_config.to_dict()


def ties_embeddings(hf_config: Any) -> bool:
    """Whether an HF config ties ``lm_head`` to the token embeddings.

    ``tie_word_embeddings`` when given, else the transformers default of the model type
    (True for Gemma and Gemma 2, False otherwise). ``hf_config`` is a ``config.json`` dict,
    a ``PretrainedConfig`` or None.
    """
    cfg = _cfg(hf_config)
    if is_mistral3(cfg):  # the text decoder's setting
        cfg = {"tie_word_embeddings": cfg.get("tie_word_embeddings", False)} | dict(
            cfg.get("text_config") or {}
        )
    tied_default = cfg.get("model_type") in _TIED_BY_DEFAULT
    return bool(cfg.get("tie_word_embeddings", tied_default))


def _split_module(rest: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    """Split ``rest`` into (known module, param suffix) using the longest module match."""
    for module in sorted(table, key=len, reverse=True):
        if rest.startswith(module + "."):
            return module, rest[len(module) + 1 :]
    return None


def _param_to_native(module: str, suffix: str) -> str:
    return "scale" if module.split(".")[-1] in _NORMS and suffix == "weight" else suffix


def _param_to_hf(module: str, suffix: str) -> str:
    return "weight" if module.split(".")[-1] in _NORMS and suffix == "scale" else suffix


def hf_to_native(
    state_dict: Mapping[str, Tensor],
    model_type: Any,
    hf_config: Any = None,
    fused_blocks: Mapping[str, list[str]] | None = None,
) -> dict[str, Tensor]:
    """Rename a Hugging Face state dict to native keys (no copies, except Phi-3 splits).

    ``hf_config`` (the ``config.json`` dict or a ``PretrainedConfig``) is needed for Phi-3 /
    Phi-4 (head counts to split ``qkv_proj``) and to drop ``lm_head.weight`` of tied models.
    ``fused_blocks`` (``{"model.layers.0.self_attn.qkv_proj": ["q_proj", "v_proj"]}``) names
    the fused adapters written in the block form of :mod:`tunesmith.models._peft_fused`.
    """
    if _llama4_vision(model_type, state_dict):
        from tunesmith.models._convert_llama4 import llama4_hf_to_native

        return llama4_hf_to_native(state_dict, hf_config)
    if _is_vision(model_type):
        from tunesmith.models._convert_qwen_vl import qwen_vl_hf_to_native
        from tunesmith.models._convert_vision import mllama_hf_to_native

        if _vision_type(model_type) in ("QWEN2_5_VL", "QWEN3_VL"):
            return qwen_vl_hf_to_native(state_dict, hf_config)
        return mllama_hf_to_native(state_dict, hf_config)
    mt = _model_type(model_type)
    layer_map, top_map, fused, _ = _RULES[mt]
    cfg = _cfg(hf_config)
    out: dict[str, Tensor] = {}
    if mt in MOE_FAMILIES:
        out, state_dict = hf_experts_to_native(state_dict, mt)
    if mt == "GEMMA4":  # layer scalars; multimodal keys; unused shared-layer k / v
        out, state_dict = gemma4_from_hf_layout(state_dict, cfg)
    if mt == "GRANITE4":
        state_dict = _g4_in(state_dict, fused_blocks)
    if is_mistral3(cfg):  # the text decoder of a multimodal Mistral 3 checkpoint
        state_dict = mistral3_text_keys(state_dict)
    for key, value in state_dict.items():
        if _DROP.search(key):
            continue
        m = _LAYER_RE.match(key)
        if m:
            i, rest = m.group(2), m.group(3)
            if fused:
                hit = _split_module(rest, {k: k for k in _FUSED_PHI3})
                if hit:
                    blocks = (fused_blocks or {}).get(f"model.layers.{i}.{hit[0]}")
                    _split_fused(out, f"layers.{i}", hit[0], hit[1], value, cfg, blocks)
                    continue
            hit = _split_module(rest, layer_map)
            if hit is None:
                raise KeyError(f"Unexpected key {key!r} in a {mt} Hugging Face checkpoint.")
            module = layer_map[hit[0]]
            out[f"layers.{i}.{module}.{_param_to_native(module, hit[1])}"] = value
            continue
        hit = _split_module(key, top_map)
        if hit is None:
            raise KeyError(f"Unexpected key {key!r} in a {mt} Hugging Face checkpoint.")
        module = top_map[hit[0]]
        if module == "output" and hit[0] == "lm_head" and ties_embeddings(cfg):
            continue  # tied: the embedding matrix is the output projection
        out[f"{module}.{_param_to_native(module, hit[1])}"] = value
    if mt == "LLAMA4":  # HF's Llama 4 q/k rows are in the interleaved (complex) RoPE layout
        out = _permute_qk(out, *_attn_sizes(cfg), permute_meta_to_hf)
    return out


def native_to_hf(
    state_dict: Mapping[str, Tensor], model_type: Any, hf_config: Any = None
) -> dict[str, Tensor]:
    """Inverse of :func:`hf_to_native` (REWARD writes the head as ``score.weight``)."""
    if _llama4_vision(model_type, state_dict):
        from tunesmith.models._convert_llama4 import llama4_native_to_hf

        return llama4_native_to_hf(state_dict, hf_config)
    if _is_vision(model_type):
        from tunesmith.models._convert_qwen_vl import qwen_vl_native_to_hf
        from tunesmith.models._convert_vision import mllama_native_to_hf

        if _vision_type(model_type) in ("QWEN2_5_VL", "QWEN3_VL"):
            return qwen_vl_native_to_hf(state_dict, hf_config)
        return mllama_native_to_hf(state_dict, hf_config)
    mt = _model_type(model_type)
    layer_map, top_map, fused, _ = _RULES[mt]
    inv_layer = {v: k for k, v in layer_map.items()}
    inv_top = {v: k for k, v in top_map.items()}
    if mt == "REWARD":
        inv_top["output"] = "score"
    fused_parts = {
        f"{'attn' if f.startswith('self_attn') else 'mlp'}.{n}": f
        for f, names in _FUSED_PHI3.items()
        for n in names
    }
    out: dict[str, Tensor] = {}
    if mt == "LLAMA4":
        state_dict = _permute_qk(state_dict, *_attn_sizes(_cfg(hf_config)), permute_hf_to_meta)
    if mt in MOE_FAMILIES:
        out, state_dict = native_experts_to_hf(state_dict, mt)
    extras: dict[str, Tensor] = {}
    if mt == "GEMMA4":  # layer scalars and experts: converted after the renames
        extras, state_dict = gemma4_native_extras(state_dict)
    pending: dict[tuple[str, str], dict[str, dict[str, Tensor]]] = {}
    for key, value in state_dict.items():
        m = _LAYER_RE.match(key)
        if m and not m.group(1):
            i, rest = m.group(2), m.group(3)
            if fused:
                hit = _split_module(rest, {k: k for k in fused_parts})
                if hit:
                    part = hit[0].split(".")[-1]
                    group = pending.setdefault((i, fused_parts[hit[0]]), {})
                    group.setdefault(hit[1], {})[part] = value
                    continue
            hit = _split_module(rest, inv_layer)
            if hit is None:
                raise KeyError(f"Unexpected native key {key!r} for model type {mt}.")
            out[f"model.layers.{i}.{inv_layer[hit[0]]}.{_param_to_hf(hit[0], hit[1])}"] = value
            continue
        hit = _split_module(key, inv_top)
        if hit is None:
            raise KeyError(f"Unexpected native key {key!r} for model type {mt}.")
        out[f"{inv_top[hit[0]]}.{_param_to_hf(hit[0], hit[1])}"] = value
    for (i, fused_name), by_suffix in pending.items():
        for suffix, value in _fuse(fused_name, by_suffix, i, _cfg(hf_config)).items():
            out[f"model.layers.{i}.{fused_name}.{suffix}"] = value
    if mt == "GEMMA4":
        return gemma4_to_hf_layout(extras, out, _cfg(hf_config))
    if mt == "GRANITE4":
        return _g4_out(out)
    if is_mistral3(_cfg(hf_config)):  # Mistral3ForConditionalGeneration's file keys
        return mistral3_layout(out)
    return out


# ---------------------------------------------------------------- q/k layout permutations
def permute_meta_to_hf(w: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """Interleaved (Meta / GGUF) rows ``[n_heads * head_dim, ...]`` -> rotate-half rows."""
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def permute_hf_to_meta(w: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """Inverse of :func:`permute_meta_to_hf`."""
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, head_dim // 2, *rest).transpose(1, 2).reshape(w.shape)


def _permutes_rows(suffix: str) -> bool:
    """Output-row tensors of a q/k projection (weights, biases, lora_b, DoRA magnitude)."""
    return suffix in ("weight", "bias", "lora_b.weight", "magnitude")


def _permute_qk(
    sd: Mapping[str, Tensor], n_heads: int, n_kv: int, head_dim: int, fn: Any
) -> dict[str, Tensor]:
    out = dict(sd)
    for key, value in sd.items():
        m = re.match(r"^layers\.\d+\.attn\.([qk])_proj\.(.+)$", key)
        if m and _permutes_rows(m.group(2)):
            out[key] = fn(value, n_heads if m.group(1) == "q" else n_kv, head_dim)
    return out


def torchtune_to_native(
    state_dict: Mapping[str, Tensor],
    model_type: Any,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> dict[str, Tensor]:
    """torchtune checkpoints use native keys; Llama-style ones store q/k interleaved."""
    if not _RULES[_model_type(model_type)][3]:
        return dict(state_dict)
    return _permute_qk(state_dict, num_heads, num_kv_heads, head_dim, permute_meta_to_hf)


def native_to_torchtune(
    state_dict: Mapping[str, Tensor],
    model_type: Any,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> dict[str, Tensor]:
    """Inverse of :func:`torchtune_to_native`."""
    if not _RULES[_model_type(model_type)][3]:
        return dict(state_dict)
    return _permute_qk(state_dict, num_heads, num_kv_heads, head_dim, permute_hf_to_meta)


_META = {
    "attention.wq": "attn.q_proj",
    "attention.wk": "attn.k_proj",
    "attention.wv": "attn.v_proj",
    "attention.wo": "attn.output_proj",
    "feed_forward.w1": "mlp.w1",
    "feed_forward.w2": "mlp.w2",
    "feed_forward.w3": "mlp.w3",
    "attention_norm": "sa_norm",
    "ffn_norm": "mlp_norm",
}
_META_TOP = {"tok_embeddings": "tok_embeddings", "norm": "norm", "output": "output"}


def _meta_sizes(params: Mapping[str, Any]) -> tuple[int, int, int]:
    n_heads = params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    return n_heads, n_kv, params.get("head_dim") or params["dim"] // n_heads


def meta_to_native(
    state_dict: Mapping[str, Tensor], model_type: Any = "LLAMA3", params: Any = None
) -> dict[str, Tensor]:
    """Meta's ``consolidated.00.pth`` keys -> native, permuting q/k to rotate-half.

    ``params`` is Meta's ``params.json`` dict (``dim``, ``n_heads``, ``n_kv_heads``).
    ``LLAMA3_VISION`` is converted by ``_convert_vision_meta``.
    """
    if params is None:
        raise ValueError("meta_to_native needs params (Meta's params.json: dim, n_heads, ...).")
    if _vision_type(model_type) == "LLAMA3_VISION":
        from tunesmith.models._convert_vision_meta import mllama_meta_to_native

        return mllama_meta_to_native(state_dict, params)
    _model_type(model_type)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if _DROP.search(key):
            continue
        m = _LAYER_RE.match(key)
        table, prefix, rest = (
            (_META, f"layers.{m.group(2)}.", m.group(3)) if m else (_META_TOP, "", key)
        )
        hit = _split_module(rest, table)
        if hit is None:
            raise KeyError(f"Unexpected key {key!r} in a Meta checkpoint.")
        module = table[hit[0]]
        out[f"{prefix}{module}.{_param_to_native(module, hit[1])}"] = value
    return _permute_qk(out, *_meta_sizes(params), permute_meta_to_hf)


def native_to_meta(
    state_dict: Mapping[str, Tensor],
    model_type: Any = "LLAMA3",
    params: Any = None,
    meta_reference: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Inverse of :func:`meta_to_native`. ``meta_reference`` (``LLAMA3_VISION`` only): the
    Meta file as loaded, whose tile-embedding cells no aspect ratio reaches are kept."""
    if params is None:
        raise ValueError("native_to_meta needs params (Meta's params.json: dim, n_heads, ...).")
    if _vision_type(model_type) == "LLAMA3_VISION":
        from tunesmith.models._convert_vision_meta import mllama_native_to_meta

        return mllama_native_to_meta(state_dict, params, meta_reference)
    _model_type(model_type)
    sd = _permute_qk(state_dict, *_meta_sizes(params), permute_hf_to_meta)
    inv = {v: k for k, v in _META.items()}
    inv_top = {v: k for k, v in _META_TOP.items()}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _LAYER_RE.match(key)
        table, prefix, rest = (
            (inv, f"layers.{m.group(2)}.", m.group(3)) if m else (inv_top, "", key)
        )
        hit = _split_module(rest, table)
        if hit is None:
            raise KeyError(f"Native key {key!r} has no Meta equivalent.")
        out[f"{prefix}{table[hit[0]]}.{_param_to_hf(hit[0], hit[1])}"] = value
    return out
