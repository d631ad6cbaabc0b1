"""Does a Hugging Face ``config.json`` describe the weights beside it?

A wrong ``config.json`` (another model's, an edited ``hidden_size``...) would otherwise be
accepted at load, build a model of the wrong shape or fail deep inside ``load_state_dict``,
and be copied into every output folder, which transformers then cannot load. The checks
compare the config's sizes with tensor shapes of the Hugging Face state dict:

==========================  ===========================================================
config key                  tensor dimension
==========================  ===========================================================
``vocab_size``              ``model.embed_tokens.weight [vocab, hidden]`` dim 0, ``lm_head``
``hidden_size``             ``model.embed_tokens.weight`` dim 1
``num_hidden_layers``       the number of ``model.layers.<i>.`` indices
``num_attention_heads``     ``q_proj.weight [heads * head_dim, hidden]`` dim 0 (``head_dim``
                            from the config, else ``hidden_size / num_attention_heads``)
``num_key_value_heads``     ``k_proj.weight [kv_heads * head_dim, hidden]`` dim 0
``intermediate_size``       ``mlp.gate_proj.weight`` / ``up_proj`` dim 0, ``down_proj`` dim 1
==========================  ===========================================================

Phi-3's fused ``qkv_proj`` / ``gate_up_proj`` are checked as the sums they hold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tunesmith.utils._integrity import CheckpointError

__all__ = ["config_mismatch", "check_config_matches_weights"]

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def _get(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is None and isinstance(config.get("text_config"), Mapping):
        value = config["text_config"].get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def config_mismatch(
    config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]
) -> tuple[str, int, str, tuple[int, ...]] | None:
    """The first ``(config key, config value, tensor name, tensor shape)`` that disagree, or
    None when ``config`` fits ``shapes`` (Hugging Face tensor name -> shape)."""
    shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    vocab, hidden = _get(config, "vocab_size"), _get(config, "hidden_size")
    heads, layers = _get(config, "num_attention_heads"), _get(config, "num_hidden_layers")
    kv_heads = _get(config, "num_key_value_heads") or heads
    head_dim = _get(config, "head_dim") or (hidden // heads if hidden and heads else None)
    inter = _get(config, "intermediate_size")
    checks: list[tuple[str, int | None, str, int, int | None]] = [
        # (config key, its value, tensor, dim, expected size of that dim)
        ("vocab_size", vocab, "model.embed_tokens.weight", 0, vocab),
        ("hidden_size", hidden, "model.embed_tokens.weight", 1, hidden),
        ("vocab_size", vocab, "lm_head.weight", 0, vocab),
        ("hidden_size", hidden, "lm_head.weight", 1, hidden),
    ]
    q_size = heads * head_dim if heads and head_dim else None
    kv_size = kv_heads * head_dim if kv_heads and head_dim else None
    attn = "model.layers.0.self_attn."
    checks += [
        ("num_attention_heads", heads, attn + "q_proj.weight", 0, q_size),
        ("hidden_size", hidden, attn + "q_proj.weight", 1, hidden),
        ("num_key_value_heads", kv_heads, attn + "k_proj.weight", 0, kv_size),
        ("num_key_value_heads", kv_heads, attn + "v_proj.weight", 0, kv_size),
        ("hidden_size", hidden, attn + "o_proj.weight", 0, hidden),
    ]
    if q_size and kv_size:
        checks.append(
            ("num_attention_heads", heads, attn + "qkv_proj.weight", 0, q_size + 2 * kv_size)
        )
    mlp = "model.layers.0.mlp."
    checks += [
        ("intermediate_size", inter, mlp + "gate_proj.weight", 0, inter),
        ("intermediate_size", inter, mlp + "up_proj.weight", 0, inter),
        ("intermediate_size", inter, mlp + "down_proj.weight", 1, inter),
        ("intermediate_size", inter, mlp + "gate_up_proj.weight", 0, 2 * inter if inter else None),
        ("hidden_size", hidden, mlp + "down_proj.weight", 0, hidden),
    ]
    for key, value, name, dim, expected in checks:
        shape = shapes.get(name)
        if value is None or expected is None or shape is None or len(shape) <= dim:
            continue
        if shape[dim] != expected:
            return key, value, name, shape
    if layers is not None:
        indices = {int(m.group(1)) for k in shapes if (m := _LAYER.match(k))}
        if indices and max(indices) + 1 != layers:
            last = max(indices)
            name = next(k for k in sorted(shapes) if k.startswith(f"model.layers.{last}."))
            return "num_hidden_layers", layers, f"{name} (layers 0-{last})", shapes[name]
    return None


def check_config_matches_weights(
    config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], config_path: object
) -> None:
    """Raise :class:`CheckpointError` (one line naming ``config_path``, the key, its value and
    the tensor's shape) when ``config`` does not describe tensors of ``shapes``."""
    hit = config_mismatch(config, shapes)
    if hit is None:
        return
    key, value, name, shape = hit
    raise CheckpointError(
        f"config.json does not describe the weights beside it: {key}={value} but {name} has "
        f"shape {list(shape)} ({config_path}): use the config.json that came with these "
        "weights (or download the model again)"
    )
