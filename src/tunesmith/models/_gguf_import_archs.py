"""The per-architecture part of GGUF import (``gguf.load_gguf``): which llama.cpp
architectures are read, as which transformers model type, their tensor-name exceptions and
the config keys beyond Llama's that each architecture's metadata implies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ARCH_LAYER_MAP", "IMPORT_ARCHS", "NORM_ROPE", "ROPE_TENSORS", "arch_config"]

# general.architecture -> (transformers model_type, architectures entry); llama.cpp's
# NORM_ROPE: llama.cpp "normal" RoPE, q/k rows in Meta's interleaved order
IMPORT_ARCHS = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "smollm3": ("smollm3", "SmolLM3ForCausalLM"),
    "granite": ("granite", "GraniteForCausalLM"),
    "olmo2": ("olmo2", "Olmo2ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}
# per-architecture tensor names (phi3: Phi-3's own fused qkv / gate-up projections)
ARCH_LAYER_MAP = {
    "phi3": {
        "attn_qkv.weight": "self_attn.qkv_proj.weight",
        "ffn_up.weight": "mlp.gate_up_proj.weight",
    },  # fmt: skip
}
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
NORM_ROPE = ("llama", "smollm3", "granite")


def arch_config(
    arch: str, metadata: dict[str, Any], config: dict[str, Any], reader: Any
) -> dict[str, Any]:
    """The config keys of an architecture beyond Llama's (what llama.cpp's loader fixes or
    reads for it: SmolLM3's NoPE every 4th layer, Granite's multipliers, Phi-3's partial
    rotary, window and longrope factors)."""
    if arch == "phi3":
        return _phi3_config(metadata, config, reader)
    if arch == "smollm3":
        return {"no_rope_layer_interval": 4, "use_sliding_window": False,
                "no_rope_layers": [int((i + 1) % 4 != 0)
                                   for i in range(config["num_hidden_layers"])]}  # fmt: skip
    if arch == "olmo2" and metadata.get("olmo2.attention.sliding_window"):
        raise ValueError("GGUF olmo2 file with sliding windows (OLMo 3) cannot be imported")
    if arch != "granite":
        return {}
    if metadata.get("granite.rope.scaling.finetuned") is False:
        raise ValueError("GGUF granite file without RoPE (Granite 4.0) cannot be imported")
    return {
        "embedding_multiplier": float(metadata.get("granite.embedding_scale", 1.0)),
        "residual_multiplier": float(metadata.get("granite.residual_scale", 1.0)),
        "attention_multiplier": float(
            metadata.get("granite.attention.scale", 1 / math.sqrt(config["head_dim"]))
        ),
        "logits_scaling": float(metadata.get("granite.logit_scale", 1.0)),
    }


def _phi3_config(metadata: dict[str, Any], config: dict[str, Any], reader: Any) -> dict:
    import gguf

    head_dim = config["head_dim"]
    n_rot = int(metadata.get("phi3.rope.dimension_count", head_dim))
    out: dict[str, Any] = {"sliding_window": int(metadata.get("phi3.attention.sliding_window", 0))
                           or None}  # fmt: skip
    if n_rot != head_dim:
        out["partial_rotary_factor"] = n_rot / head_dim
    factors = {
        t.name.split("_")[2].split(".")[0]: gguf.quants.dequantize(t.data, t.tensor_type)
        .astype(np.float64).reshape(-1).tolist()
        for t in reader.tensors if t.name.startswith("rope_factors_")
    }  # fmt: skip
    if factors:
        original = int(metadata["phi3.rope.scaling.original_context_length"])
        out["original_max_position_embeddings"] = original
        out["rope_scaling"] = {"type": "longrope", "long_factor": factors["long"],
                               "short_factor": factors["short"]}  # fmt: skip
        if "phi3.rope.scaling.attn_factor" in metadata:
            out["rope_scaling"]["attention_factor"] = float(
                metadata["phi3.rope.scaling.attn_factor"]
            )
    return out
