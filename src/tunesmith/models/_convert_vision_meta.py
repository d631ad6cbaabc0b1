"""Llama 3.2 Vision in Meta's layout (``consolidated.00.pth`` + ``params.json``) <-> native.

Meta's keys are ``text_model.*`` / ``vision_model.vision_encoder.*`` /
``vision_model.vision_projection.*`` (llama-models' reference implementation, the layout
torchtune's ``llama3_vision_meta_to_tune`` reads). Besides the renames:

* text self-attention q/k are stored interleaved (Meta's RoPE layout) and permuted to the
  native rotate-half layout; cross-attention q/k (no RoPE) are not;
* ``text_model.cross_attention_layers.{j}`` runs before self-attention layer
  ``fusion_schedule(n_layers, n_cross)[j]``, so it is that layer's ``fusion_layer``;
* the patch embedding ``conv1._linear.weight [d, C * p * p]`` is native's conv
  ``[d, C, p, p]``;
* Meta keeps one grid of tile position embeddings ``[T, T, L, d]`` (``T`` = max tiles);
  native (like transformers) keeps one row per aspect ratio ``[R + 1, T * L * d]`` (row 0 is
  the padding id, row ``i + 1`` holds ``grid[:h, :w]`` of ratio ``(h, w)`` flattened, zero
  padded). Reading expands the grid; writing folds the rows back. Cells no aspect ratio
  reaches are taken from ``meta_reference`` (the file as loaded), so Meta -> native -> Meta
  is bit-identical; rows that no longer agree (an encoder trained per aspect ratio) are
  averaged into the grid with a warning, since Meta's layout cannot hold them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tunesmith.models.convert_weights import permute_hf_to_meta, permute_meta_to_hf

__all__ = [
    "GRID_KEYS",
    "fusion_schedule",
    "meta_aspect_ratios",
    "mllama_hf_config_from_params",
    "mllama_meta_to_native",
    "mllama_native_to_meta",
]

logger = logging.getLogger(__name__)

_TEXT = {
    "attention_norm.weight": "sa_norm.scale",
    "attention.wq.weight": "attn.q_proj.weight",
    "attention.wk.weight": "attn.k_proj.weight",
    "attention.wv.weight": "attn.v_proj.weight",
    "attention.wo.weight": "attn.output_proj.weight",
    "ffn_norm.weight": "mlp_norm.scale",
    "feed_forward.w1.weight": "mlp.w1.weight",
    "feed_forward.w2.weight": "mlp.w2.weight",
    "feed_forward.w3.weight": "mlp.w3.weight",
}
_CROSS = {
    **{k: v for k, v in _TEXT.items() if k != "attention_norm.weight"},
    "attention_norm.weight": "ca_norm.scale",
    "attention.q_norm.weight": "attn.q_norm.scale",
    "attention.k_norm.weight": "attn.k_norm.scale",
    "gate_attn": "ca_scale.scale",
    "gate_ffwd": "mlp_scale.scale",
}
_VIT_LAYER = {
    "attn.wq.weight": "attn.q_proj.weight",
    "attn.wk.weight": "attn.k_proj.weight",
    "attn.wv.weight": "attn.v_proj.weight",
    "attn.wo.weight": "attn.output_proj.weight",
    "mlp.c_fc.weight": "mlp.w1.weight",
    "mlp.c_fc.bias": "mlp.w1.bias",
    "mlp.c_proj.weight": "mlp.w2.weight",
    "mlp.c_proj.bias": "mlp.w2.bias",
    "ln_1.weight": "sa_norm.weight",
    "ln_1.bias": "sa_norm.bias",
    "ln_2.weight": "mlp_norm.weight",
    "ln_2.bias": "mlp_norm.bias",
    "gate_attn": "sa_scale.scale",
    "gate_ffn": "mlp_scale.scale",
}
_TOP = {
    "text_model.tok_embeddings.weight": "decoder.tok_embeddings.weight",
    "text_model.learnable_embedding.weight": "decoder.tok_embeddings.fusion_embedding.weight",
    "text_model.norm.weight": "decoder.norm.scale",
    "text_model.output.weight": "decoder.output.weight",
    "vision_model.vision_projection.weight": "encoder.projection.output.weight",
    "vision_model.vision_projection.bias": "encoder.projection.output.bias",
}
_ENC = "vision_model.vision_encoder."
_VIT_TOP = {
    "positional_embedding": "token_pos_embedding.local_token_positional_embedding",
    "gated_positional_embedding": "token_pos_embedding.global_token_positional_embedding",
    "gated_positional_embedding_gate": "token_pos_embedding.gate",
    "ln_pre.weight": "ln_pre.weight",
    "ln_pre.bias": "ln_pre.bias",
    "ln_post.weight": "ln_post.weight",
    "ln_post.bias": "ln_post.bias",
    "pre_tile_pos_embed.embedding": "pre_tile_pos_embed.embedding",
    "pre_tile_pos_embed.gate": "pre_tile_pos_embed.gate",
    "post_tile_pos_embed.embedding": "post_tile_pos_embed.embedding",
    "post_tile_pos_embed.gate": "post_tile_pos_embed.gate",
    "class_embedding": "cls_token_embedding.weight",
    "conv1._linear.weight": "conv.weight",
}
#: Meta keys of the tile position-embedding grids ``[T, T, L, d]``
GRID_KEYS = tuple(
    _ENC + k
    for k in (
        "gated_positional_embedding",
        "pre_tile_pos_embed.embedding",
        "post_tile_pos_embed.embedding",
    )
)
_DROP = {"text_model.rope.freqs"}


def fusion_schedule(n_layers: int, n_cross: int) -> list[int]:
    """Self-attention layers preceded by a cross-attention layer (llama-models' rule: every
    ``ceil(n_layers / n_cross)``-th layer counted from the last), ascending."""
    if n_cross <= 0:
        return []
    k = math.ceil(n_layers / n_cross)
    return list(range(n_layers))[::-1][::k][:n_cross][::-1]


def meta_aspect_ratios(max_num_tiles: int) -> list[tuple[int, int]]:
    """The aspect ratios (rows of native's tile embeddings) for ``max_num_tiles``, in
    transformers' order (``[(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)]``
    for 4)."""
    return [
        (a, b)
        for a in range(1, max_num_tiles + 1)
        for b in range(1, max_num_tiles + 1)
        if a * b <= max_num_tiles
    ]


def _sizes(params: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """``(n_layers, n_cross, n_heads, n_kv_heads, head_dim)`` from ``params.json``."""
    if params is None or "vision_num_cross_attention_layers" not in params:
        raise ValueError(
            "params.json: a Llama 3.2 Vision Meta checkpoint needs n_layers, n_heads, dim and "
            "vision_num_cross_attention_layers (and vision_max_num_chunks)"
        )
    n_heads = int(params["n_heads"])
    head_dim = int(params.get("head_dim") or params["dim"] // n_heads)
    return (
        int(params["n_layers"]),
        int(params["vision_num_cross_attention_layers"]),
        n_heads,
        int(params.get("n_kv_heads") or n_heads),
        head_dim,
    )


def _ratios(params: Mapping[str, Any]) -> list[tuple[int, int]]:
    return meta_aspect_ratios(int(params.get("vision_max_num_chunks", 4)))


def mllama_hf_config_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an ``MllamaConfig`` dict the HF / PEFT key conversion reads (text layer
    count and ``cross_attention_layers`` in transformers' numbering), from ``params.json``."""
    n_layers, n_cross, *_ = _sizes(params)
    schedule = fusion_schedule(n_layers, n_cross)
    cross = [s + i for i, s in enumerate(schedule)]  # HF counts the cross layers too
    return {
        "model_type": "mllama",
        "tie_word_embeddings": False,
        "text_config": {
            "num_hidden_layers": n_layers + n_cross,
            "cross_attention_layers": cross,
            "vocab_size": int(params["vocab_size"]),
            "tie_word_embeddings": False,
        },
    }


def _grid_to_rows(grid: Tensor, ratios: list[tuple[int, int]]) -> Tensor:
    """``[T, T, L, d]`` -> ``[R + 1, T * L * d]`` (row 0 and padding tiles zero)."""
    t, _, n, d = grid.shape
    rows = grid.new_zeros(len(ratios) + 1, t, n, d)
    for i, (h, w) in enumerate(ratios):
        rows[i + 1, : h * w] = grid[:h, :w].reshape(h * w, n, d)
    return rows.reshape(len(ratios) + 1, -1)


def _rows_to_grid(
    rows: Tensor, ratios: list[tuple[int, int]], t: int, d: int, reference: Tensor | None
) -> tuple[Tensor, bool]:
    """Inverse of :func:`_grid_to_rows` and whether it is exact (else cells are the mean of
    the ratios using them); cells no ratio reaches come from ``reference``."""
    n = rows.shape[-1] // (t * d)
    per = rows.reshape(len(ratios) + 1, t, n, d)
    if reference is not None and tuple(reference.shape) == (t, t, n, d):
        grid = reference.to(rows.dtype).clone()
    else:
        grid = rows.new_zeros(t, t, n, d)
    total = torch.zeros(t, t, n, d, dtype=torch.float64)
    count = torch.zeros(t, t, 1, 1, dtype=torch.float64)
    seen = torch.zeros(t, t, dtype=torch.bool)
    exact = bool((per[0] == 0).all())
    for i, (h, w) in enumerate(ratios):
        block = per[i + 1, : h * w].reshape(h, w, n, d)
        exact = exact and bool((per[i + 1, h * w :] == 0).all())
        old = seen[:h, :w]
        if old.any() and not torch.equal(grid[:h, :w][old], block[old]):
            exact = False
        grid[:h, :w][~old] = block[~old]
        seen[:h, :w] = True
        total[:h, :w] += block.double()
        count[:h, :w] += 1
    if not exact:
        mean = (total / count.clamp(min=1)).to(rows.dtype)
        grid = torch.where(seen[:, :, None, None], mean, grid)
    return grid, exact


def mllama_meta_to_native(
    state_dict: Mapping[str, Tensor], params: Mapping[str, Any]
) -> dict[str, Tensor]:
    """Meta ``consolidated.00.pth`` (Llama 3.2 Vision) -> native keys; ``params`` is
    ``params.json``."""
    n_layers, n_cross, n_heads, n_kv, head_dim = _sizes(params)
    schedule = fusion_schedule(n_layers, n_cross)
    ratios = _ratios(params)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in _DROP:
            continue
        name = _TOP.get(key)
        m = re.match(r"^text_model\.(layers|cross_attention_layers)\.(\d+)\.(.+)$", key)
        if m:
            i, rest = int(m.group(2)), m.group(3)
            if m.group(1) == "layers":
                sub = _TEXT.get(rest)
                name = sub and f"decoder.layers.{i}.{sub}"
                if rest in ("attention.wq.weight", "attention.wk.weight"):
                    heads = n_heads if rest == "attention.wq.weight" else n_kv
                    value = permute_meta_to_hf(value, heads, head_dim)
            elif i < len(schedule):
                sub = _CROSS.get(rest)
                name = sub and f"decoder.layers.{schedule[i]}.fusion_layer.{sub}"
        elif key.startswith(_ENC):
            rest = key[len(_ENC) :]
            m = re.match(r"^(transformer|global_transformer)\.resblocks\.(\d+)\.(.+)$", rest)
            if m:
                where = "clip" if m.group(1) == "transformer" else "projection"
                sub = _VIT_LAYER.get(m.group(3))
                name = sub and f"encoder.{where}.layers.{m.group(2)}.{sub}"
            elif rest in _VIT_TOP:
                name = f"encoder.clip.{_VIT_TOP[rest]}"
                if key in GRID_KEYS:
                    value = _grid_to_rows(value, ratios)
                elif rest == "conv1._linear.weight":
                    patch = int(math.isqrt(value.shape[1] // 3))
                    value = value.reshape(value.shape[0], -1, patch, patch)
        if name is None:
            raise KeyError(f"Unexpected key {key!r} in a Llama 3.2 Vision Meta checkpoint.")
        out[name] = value
    return out


def mllama_native_to_meta(
    state_dict: Mapping[str, Tensor],
    params: Mapping[str, Any],
    meta_reference: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Inverse of :func:`mllama_meta_to_native`. ``meta_reference``: the Meta tensors of
    :data:`GRID_KEYS` as loaded (grid cells no aspect ratio reaches are kept from them,
    else zero, as torchtune writes them)."""
    n_layers, n_cross, n_heads, n_kv, head_dim = _sizes(params)
    schedule = fusion_schedule(n_layers, n_cross)
    where_cross = {s: j for j, s in enumerate(schedule)}
    ratios = _ratios(params)
    t = int(params.get("vision_max_num_chunks", 4))
    text, cross = {v: k for k, v in _TEXT.items()}, {v: k for k, v in _CROSS.items()}
    vit, vit_top = {v: k for k, v in _VIT_LAYER.items()}, {v: k for k, v in _VIT_TOP.items()}
    top = {v: k for k, v in _TOP.items()}
    enc_dim = None
    local = state_dict.get("encoder.clip.token_pos_embedding.local_token_positional_embedding")
    if local is not None:
        enc_dim = int(local.shape[-1])
    fused = set(where_cross)
    found = {
        int(m.group(1))
        for k in state_dict
        if (m := re.match(r"^decoder\.layers\.(\d+)\.fusion_layer\.", k))
    }
    if found and found != fused:
        raise ValueError(
            f"Llama 3.2 Vision Meta format places cross-attention before layers {sorted(fused)} "
            f"(params.json n_layers={n_layers}, vision_num_cross_attention_layers={n_cross}); "
            f"this model has them before {sorted(found)}: save it in Hugging Face format"
        )
    out: dict[str, Tensor] = {}
    averaged: list[str] = []
    for key, value in state_dict.items():
        name = top.get(key)
        m = re.match(r"^decoder\.layers\.(\d+)\.(fusion_layer\.)?(.+)$", key)
        if m:
            i, rest = int(m.group(1)), m.group(3)
            if m.group(2):
                sub = cross.get(rest)
                name = sub and f"text_model.cross_attention_layers.{where_cross[i]}.{sub}"
            else:
                sub = text.get(rest)
                name = sub and f"text_model.layers.{i}.{sub}"
                if rest in ("attn.q_proj.weight", "attn.k_proj.weight"):
                    heads = n_heads if rest == "attn.q_proj.weight" else n_kv
                    value = permute_hf_to_meta(value, heads, head_dim)
        elif key.startswith("encoder."):
            m = re.match(r"^encoder\.(clip|projection)\.layers\.(\d+)\.(.+)$", key)
            if m:
                blocks = "transformer" if m.group(1) == "clip" else "global_transformer"
                sub = vit.get(m.group(3))
                name = sub and f"{_ENC}{blocks}.resblocks.{m.group(2)}.{sub}"
            elif key.startswith("encoder.clip.") and key[13:] in vit_top:
                name = _ENC + vit_top[key[13:]]
                if name in GRID_KEYS:
                    if enc_dim is None:
                        raise KeyError(
                            "native Llama 3.2 Vision weights lack the encoder embeddings"
                        )
                    ref = (meta_reference or {}).get(name)
                    value, exact = _rows_to_grid(value, ratios, t, enc_dim, ref)
                    if not exact:
                        averaged.append(name)
                elif key == "encoder.clip.conv.weight":
                    value = value.reshape(value.shape[0], -1)
        if name is None:
            raise KeyError(f"Native key {key!r} has no Llama 3.2 Vision Meta equivalent.")
        out[name] = value
    if averaged:
        logger.warning(
            "%s: the per-aspect-ratio tile embeddings no longer agree (or padding rows are not "
            "zero), which Meta's one-grid layout cannot hold; wrote each cell's mean over the "
            "aspect ratios that use it (save in Hugging Face format to keep them exactly)",
            ", ".join(averaged),
        )
    return out
