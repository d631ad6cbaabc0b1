"""``spec_from_hf_config``: read a Hugging Face ``config.json`` into a ``ModelSpec``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.config import ConfigError
from tunesmith.models._convert_gemma4 import gemma4_fields, gemma4_text_config
from tunesmith.models._convert_granite4 import granite4_text_config, granite4_uses_rope
from tunesmith.models.spec import FULL, SLIDING, ModelSpec, RopeScaling, alternating_sliding

__all__ = ["spec_from_hf_config", "load_hf_config", "HF_MODEL_TYPES"]

#: Hugging Face ``model_type`` -> native family (torchtune model_type string)
HF_MODEL_TYPES = {
    "llama": "LLAMA3",
    "mistral": "MISTRAL",
    "ministral3": "MISTRAL",  # Mistral + Llama-4-style query scaling (query_log_scaling)
    "mistral3": "MISTRAL",  # multimodal Mistral Small 3.1+ / Ministral 3: its text_config
    "gemma": "GEMMA",
    "gemma2": "GEMMA2",
    "gemma3_text": "GEMMA3",
    "gemma4_text": "GEMMA4",
    "gemma4": "GEMMA4",  # multimodal: its text_config (see _convert_gemma4)
    "smollm3": "SMOLLM3",
    "olmo2": "OLMO2",
    "olmo3": "OLMO3",
    "granite": "GRANITE",
    "granitemoehybrid": "GRANITE4",  # the dense Granite 4.0 models only (_convert_granite4)
    "phi3": "PHI3_MINI",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "qwen3_moe": "QWEN3_MOE",
    "mixtral": "MIXTRAL",
    "gpt_oss": "GPT_OSS",
    "llama4_text": "LLAMA4",
}
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}


def load_hf_config(path: str | Path) -> dict[str, Any]:
    """Read ``config.json`` from a checkpoint folder (or the file itself)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"No Hugging Face config.json at {file}.")
    return json.loads(file.read_text())


def _rope_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The RoPE parameters of a config, either layout (a dict; Gemma 3: one per layer type)."""
    params = dict(cfg.get("rope_parameters") or {})
    if not params:  # transformers 4.x layout
        params = dict(cfg.get("rope_scaling") or {})
        params["rope_theta"] = cfg.get("rope_theta", 10_000.0)
    return params


def _rope(
    cfg: Mapping[str, Any], params: Mapping[str, Any] | None = None
) -> tuple[float, RopeScaling | None]:
    """(base, scaling) of ``params`` (default: the config's RoPE parameters)."""
    params = _rope_params(cfg) if params is None else params
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10_000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    original = (
        params.get("original_max_position_embeddings")
        or cfg.get("original_max_position_embeddings")
        or cfg.get("max_position_embeddings", 4096)
    )
    if kind == "default":
        return theta, None
    if kind == "yarn":
        attention_factor = params.get("attention_factor")
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        if attention_factor is None and mscale and mscale_all:  # DeepSeek-V3 / Ministral 3
            attention_factor = _yarn_mscale(float(params["factor"]), mscale) / _yarn_mscale(
                float(params["factor"]), mscale_all
            )
        return theta, RopeScaling(
            factor=float(params["factor"]),
            original_max_position_embeddings=int(original),
            rope_type="yarn",
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            truncate=bool(params.get("truncate", True)),
            attention_factor=attention_factor,
        )
    if kind in ("longrope", "su"):  # "su": Phi-3's first name for it
        if "long_factor" not in params or "short_factor" not in params:
            raise ValueError("config.json: rope type longrope needs long_factor and short_factor.")
        factor = params.get("factor") or cfg.get("max_position_embeddings", original) / original
        return theta, RopeScaling(
            factor=float(factor),
            original_max_position_embeddings=int(original),
            rope_type="longrope",
            attention_factor=params.get("attention_factor"),
            long_factor=tuple(float(x) for x in params["long_factor"]),
            short_factor=tuple(float(x) for x in params["short_factor"]),
        )
    if kind == "dynamic":  # dynamic NTK grows past the config's max_position_embeddings
        return theta, RopeScaling(
            factor=float(params["factor"]),
            original_max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            rope_type="dynamic",
        )
    if kind == "linear":
        return theta, RopeScaling(factor=float(params["factor"]), rope_type="linear")
    if kind == "proportional":  # Gemma 4's global layers
        return theta, RopeScaling(
            factor=float(params.get("factor") or 1.0),
            rope_type="proportional",
            partial_rotary_factor=float(params.get("partial_rotary_factor") or 1.0),
        )
    if kind == "llama3":
        return theta, RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    raise ValueError(
        f"config.json: rope type {kind!r} is not supported (supported: default, linear, llama3, "
        "yarn, longrope, dynamic, proportional)."
    )


def _yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's ``0.1 * mscale * ln(factor) + 1`` (1 for ``factor <= 1``), as transformers."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def mistral3_text_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The text decoder's config of a multimodal ``mistral3`` config (transformers' default
    text model: ``mistral``); other configs unchanged."""
    if cfg.get("model_type") != "mistral3":
        return dict(cfg)
    text = dict(cfg.get("text_config") or {})
    text.setdefault("model_type", "mistral")
    if "tie_word_embeddings" in cfg:
        text.setdefault("tie_word_embeddings", cfg["tie_word_embeddings"])
    return text


def _rope_fields(cfg: Mapping[str, Any], head_dim: int) -> dict[str, Any]:
    """The ``ModelSpec`` RoPE fields: base, scaling, rotary width and Gemma 3's local RoPE."""
    params = _rope_params(cfg)
    local: dict[str, Any] = {}
    if FULL in params or SLIDING in params:  # one set of parameters per layer type
        full, sliding = params.get(FULL) or {}, params.get(SLIDING) or {}
        theta, scaling = _rope(cfg, full)
        if sliding and sliding != full:
            local_theta, local_scaling = _rope(cfg, sliding)
            local = dict(local_rope_base=local_theta, local_rope_scaling=local_scaling)
        params = full
    else:
        theta, scaling = _rope(cfg, params)
        if cfg.get("rope_local_base_freq") is not None:  # Gemma 3, transformers 4.x layout
            local = dict(local_rope_base=float(cfg["rope_local_base_freq"]))
    factor = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if scaling is not None and scaling.rope_type == "proportional":
        factor = 1.0  # p-RoPE keeps full-width tables (RopeScaling.partial_rotary_factor)
    rotary = int(head_dim * float(factor or 1.0))
    return dict(
        rope_base=theta,
        rope_scaling=scaling,
        rotary_dim=None if rotary == head_dim else rotary,
        **local,
    )


def _sliding(cfg: Mapping[str, Any], n_layers: int) -> tuple[int | None, tuple[str, ...] | None]:
    window = cfg.get("sliding_window")
    if window is None or cfg.get("use_sliding_window") is False:
        return None, None
    types = cfg.get("layer_types")
    if types is None:  # transformers 4.x configs: the pattern is implied by the architecture
        if cfg.get("model_type") == "gemma2":
            types = alternating_sliding(n_layers)
        elif cfg.get("model_type") in ("gemma3_text", "olmo3"):  # every step-th is global
            step = int(cfg.get("sliding_window_pattern", 6 if cfg["model_type"] != "olmo3" else 4))
            types = [FULL if (i + 1) % step == 0 else SLIDING for i in range(n_layers)]
        elif cfg.get("use_sliding_window"):  # Qwen2/3: layers from max_window_layers on slide
            start = cfg.get("max_window_layers", n_layers)
            types = [SLIDING if i >= start else FULL for i in range(n_layers)]
        else:
            return int(window), None
    types = tuple(SLIDING if t == SLIDING else FULL for t in types)
    if len(types) != n_layers:
        raise ValueError(
            f"config.json: layer_types has {len(types)} entries for {n_layers} layers."
        )
    if SLIDING not in types:
        return None, None
    return int(window), None if FULL not in types else types


def spec_from_hf_config(config: Any) -> ModelSpec:
    """Build a ``ModelSpec`` from an HF config (dict, ``PretrainedConfig``, or checkpoint dir)."""
    if isinstance(config, (str, Path)):
        config = load_hf_config(config)
    cfg: Mapping[str, Any] = config if isinstance(config, Mapping) else config.to_dict()
    if cfg.get("model_type") in ("gemma4", "gemma4_text"):
        cfg = gemma4_text_config(cfg)
    if cfg.get("model_type") == "granitemoehybrid":
        cfg = granite4_text_config(cfg)
    cfg = mistral3_text_config(cfg)
    hf_type = cfg.get("model_type")
    if hf_type not in HF_MODEL_TYPES:
        archs = ", ".join(cfg.get("architectures") or []) or "no architectures listed"
        raise ConfigError(
            f"config.json: model_type {hf_type!r} ({archs}) is not supported; supported "
            f"model types: {', '.join(sorted(HF_MODEL_TYPES))} (and mllama, qwen2_5_vl for "
            "build_from_hf's vision models)."
        )
    family = HF_MODEL_TYPES[hf_type]
    quant = (cfg.get("quantization_config") or {}).get("quant_method")
    if quant:
        raise ConfigError(
            f"config.json: the checkpoint is quantized ({quant}); tunesmith loads bf16 / fp32 "
            "weights only: use a bf16 copy (for gpt-oss e.g. unsloth/gpt-oss-20b-BF16) or "
            "dequantize it first."
        )
    biased = ("QWEN2", "GPT_OSS")
    for flag in ("mlp_bias",) + (("attention_bias",) if family not in biased else ()):
        if cfg.get(flag):
            raise ValueError(f"config.json: {flag}=true is not supported for {hf_type}.")
    gelu_default = family in ("GEMMA3", "GEMMA4")
    default_act = "gelu_pytorch_tanh" if gelu_default else "silu"  # transformers' default
    act_name = cfg.get("hidden_activation") or cfg.get("hidden_act", default_act)
    if family == "GEMMA" and act_name == "gelu":
        act_name = "gelu_pytorch_tanh"  # transformers runs Gemma with the tanh approximation
    if act_name not in _ACTIVATIONS:
        raise ValueError(f"config.json: activation {act_name!r} is not supported.")
    n_heads = cfg["num_attention_heads"]
    n_layers = cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    window, layer_types = _sliding(cfg, n_layers)
    gemma = family in ("GEMMA", "GEMMA2", "GEMMA3")
    gemma2 = family in ("GEMMA2", "GEMMA3")  # soft-caps, query scalar, sandwich norms
    archs = cfg.get("architectures") or []
    classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    spec = ModelSpec(
        family=family,
        vocab_size=cfg["vocab_size"],
        num_layers=n_layers,
        num_heads=n_heads,
        num_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        embed_dim=cfg["hidden_size"],
        intermediate_dim=cfg.get("intermediate_size_mlp") or cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 4096),
        head_dim=head_dim,
        **_rope_fields(cfg, head_dim),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        norm_offset=gemma,
        activation=_ACTIVATIONS[act_name],
        qkv_bias=family == "QWEN2" or bool(cfg.get("attention_bias")),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", gemma)) and not classifier,
        embed_scale=gemma,
        attn_softcap=cfg.get("attn_logit_softcapping") if gemma2 else None,
        final_softcap=cfg.get("final_logit_softcapping") if gemma2 else None,
        query_pre_attn_scalar=cfg.get("query_pre_attn_scalar") if gemma2 else None,
        sliding_window=window,
        layer_types=layer_types,
        qk_norm=family in ("QWEN3", "QWEN3_MOE", "GEMMA3", "OLMO2", "OLMO3"),
        post_norms=gemma2 or family in ("OLMO2", "OLMO3"),
        num_classes=len(cfg.get("id2label") or {0: 0, 1: 1}) if classifier else None,
        **_moe_fields(cfg, family, n_layers),
        **_dense_fields(cfg, family),
        query_log_scaling=_query_log_scaling(cfg),
    )
    if family == "OLMO3" and spec.rope_scaling is not None and spec.local_rope_base is None:
        # transformers 4.x layout (one rope_scaling): OLMo 3 scales the full-attention layers
        # only; its sliding-window layers keep plain RoPE of the same base
        spec = spec.replace(local_rope_base=spec.rope_base)
    return spec.replace(**gemma4_fields(cfg)) if family == "GEMMA4" else spec


def _query_log_scaling(cfg: Mapping[str, Any]) -> tuple[float, float] | None:
    """Ministral 3's ``(llama_4_scaling_beta, original_max_position_embeddings)`` (its
    attention multiplies the queries by ``1 + beta * ln(1 + floor(pos / length))``)."""
    if cfg.get("model_type") != "ministral3":
        return None
    params = _rope_params(cfg)
    beta = params.get("llama_4_scaling_beta")
    if beta is None:
        raise ValueError("config.json: ministral3 rope_parameters need llama_4_scaling_beta.")
    return float(beta), float(params["original_max_position_embeddings"])


def _dense_fields(cfg: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Family-specific dense fields: SmolLM3's NoPE layers (``no_rope_layers[i] == 0``),
    OLMo 2 / 3's norm placement, Granite's multipliers (Granite 4 without RoPE: all NoPE)."""
    if family == "SMOLLM3":
        rope = cfg.get("no_rope_layers") or [1] * cfg["num_hidden_layers"]
        return dict(nope_layers=tuple(i for i, r in enumerate(rope) if not r))
    if family in ("OLMO2", "OLMO3"):
        return dict(pre_norms=False, qk_norm_across_heads=True, norm_scale_fp32=True)
    if family in ("GRANITE", "GRANITE4"):
        nope = family == "GRANITE4" and not granite4_uses_rope(cfg)
        return dict(
            nope_layers=tuple(range(cfg["num_hidden_layers"])) if nope else (),
            embed_multiplier=float(cfg.get("embedding_multiplier", 1.0)),
            residual_multiplier=float(cfg.get("residual_multiplier", 1.0)),
            attn_scale=float(cfg.get("attention_multiplier", 1.0)),
            logits_divisor=float(cfg.get("logits_scaling", 1.0)),
        )
    return {}


def _moe_fields(cfg: Mapping[str, Any], family: str, n_layers: int) -> dict[str, Any]:
    """The ``ModelSpec`` mixture-of-experts fields of a Qwen3-MoE / Mixtral config."""
    if family == "LLAMA4":
        n_exp = cfg["num_local_experts"]
        moe = cfg.get("moe_layers")
        if moe is None:
            step = cfg.get("interleave_moe_layer_step", 1)
            moe = list(range(step - 1, n_layers, step))
        rope = cfg.get("no_rope_layers") or [1] * n_layers
        nope = tuple(i for i, r in enumerate(rope) if not r)
        return dict(
            num_experts=n_exp,
            experts_per_token=cfg["num_experts_per_tok"],
            moe_intermediate_dim=cfg["intermediate_size"],
            dense_layers=tuple(i for i in range(n_layers) if i not in set(moe)),
            router_scoring="sigmoid",
            router_norm_topk=False,
            router_weights_inputs=True,
            shared_expert_dim=cfg["intermediate_size"],
            nope_layers=nope,
            attn_chunk_size=cfg.get("attention_chunk_size"),
            qk_rms_norm=bool(cfg.get("use_qk_norm", True)),
            attn_temperature=(
                (float(cfg.get("floor_scale", 8192)), float(cfg.get("attn_scale", 0.1)))
                if cfg.get("attn_temperature_tuning", True) and nope
                else None
            ),
        )
    if family == "GPT_OSS":
        if float(cfg.get("swiglu_alpha", 1.702)) != 1.702:
            raise ValueError("config.json: swiglu_alpha != 1.702 is not supported.")
        return dict(
            num_experts=cfg["num_local_experts"],
            experts_per_token=cfg["num_experts_per_tok"],
            moe_intermediate_dim=cfg["intermediate_size"],
            router_bias=True,
            expert_bias=True,
            swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
            attn_sinks=True,
            out_bias=bool(cfg.get("attention_bias", True)),
        )
    if family == "MIXTRAL":
        return dict(
            num_experts=cfg["num_local_experts"],
            experts_per_token=cfg["num_experts_per_tok"],
            moe_intermediate_dim=cfg["intermediate_size"],
        )
    if family != "QWEN3_MOE":
        return {}
    step = cfg.get("decoder_sparse_step", 1)
    only = set(cfg.get("mlp_only_layers") or ())
    n_exp = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    dense = tuple(i for i in range(n_layers) if i in only or n_exp == 0 or (i + 1) % step)
    return dict(
        num_experts=n_exp,
        experts_per_token=cfg["num_experts_per_tok"] if n_exp else 0,
        moe_intermediate_dim=cfg["moe_intermediate_size"],
        dense_layers=dense,
        router_norm_topk=bool(cfg.get("norm_topk_prob", False)),
    )
