"""Per-architecture pieces of GGUF export: which llama.cpp architecture a spec is, its
hyper-parameter keys, its tensor names/layout, and the tensor encodings.

llama.cpp architectures written (as ``convert_hf_to_gguf.py`` writes them):

* ``llama``: Llama 2 / 3 / 3.x, Code Llama, Mistral without a sliding window, SmolLM2. q/k rows
  are permuted from the native (Hugging Face rotate-half) layout to Meta's interleaved one,
  because llama.cpp applies "normal" (interleaved) RoPE to this architecture.
* ``qwen2``: Qwen2 / Qwen2.5 (q/k/v biases). NEOX RoPE: no permutation.
* ``qwen3``: Qwen3 dense (per-head q/k RMSNorm ``attn_q_norm`` / ``attn_k_norm``; head_dim is
  written as ``key_length`` / ``value_length``). NEOX RoPE: no permutation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tunesmith.models.convert_weights import permute_hf_to_meta
from tunesmith.models.spec import ModelSpec

__all__ = ["GGUF_TYPES", "encode", "file_type", "gguf_arch", "gguf_tensors", "write_hparams"]

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
"""Output types the export accepts: what ``gguf.quants`` can quantize in Python. The k-quants
(Q4_K_M, Q6_K, ...) are not implemented by the ``gguf`` package; write f16 and run llama.cpp's
``llama-quantize`` (or ``tunesmith.models.gguf_export.llama_cpp_quantize`` when
``llama-cpp-python`` is installed) on it."""

_LAYER_NAMES = {
    "sa_norm.scale": "attn_norm.weight",
    "mlp_norm.scale": "ffn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.q_proj.bias": "attn_q.bias",
    "attn.k_proj.bias": "attn_k.bias",
    "attn.v_proj.bias": "attn_v.bias",
    "attn.q_norm.scale": "attn_q_norm.weight",
    "attn.k_norm.scale": "attn_k_norm.weight",
    "attn.output_proj.weight": "attn_output.weight",
    "mlp.w1.weight": "ffn_gate.weight",
    "mlp.w2.weight": "ffn_down.weight",
    "mlp.w3.weight": "ffn_up.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.scale": "output_norm.weight",
    "output.weight": "output.weight",
}
_ARCH_OF_FAMILY = {
    **dict.fromkeys(
        ("LLAMA2", "LLAMA3", "LLAMA3_1", "LLAMA3_2", "LLAMA3_3", "CODE_LLAMA2", "MISTRAL"),
        "llama",
    ),
    "SMOLLM2": "llama",
    "QWEN2": "qwen2",
    "QWEN2_5": "qwen2",
    "QWEN3": "qwen3",
}
# spec fields each architecture allows to be set (everything else must be off)
_ALLOWED = {"llama": set(), "qwen2": {"qkv_bias"}, "qwen3": {"qk_norm"}}
_NOT_WRITTEN = (
    "Gemma 2/3 and Phi-3 (SentencePiece vocabularies, Gemma's norm offset and soft-capping, "
    "Phi-3's fused qkv) and the MoE families are not written yet"
)


def gguf_arch(spec: ModelSpec) -> str:
    """The llama.cpp architecture name of ``spec``; ValueError (what is unsupported) if none."""
    arch = _ARCH_OF_FAMILY.get(spec.family.upper())
    if arch is None:
        raise ValueError(
            f"GGUF export does not write family {spec.family}: it writes llama (Llama 2/3.x, "
            f"Code Llama, Mistral, SmolLM2), qwen2 (Qwen2/2.5) and qwen3; {_NOT_WRITTEN}"
        )
    problems = []
    for field in ("qkv_bias", "norm_offset", "embed_scale", "qk_norm", "post_norms"):
        if getattr(spec, field) and field not in _ALLOWED[arch]:
            problems.append(f"{field}=True")
    for field in ("attn_softcap", "final_softcap", "query_pre_attn_scalar", "num_classes"):
        if getattr(spec, field) is not None:
            problems.append(f"{field} set")
    if spec.num_experts:
        problems.append("mixture of experts")
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "yarn":
        problems.append("YaRN rope scaling (not written yet)")
    if spec.activation != "silu":
        problems.append(f"activation {spec.activation}")
    if spec.sliding_window is not None and spec.sliding_window < spec.max_seq_len:
        problems.append(f"sliding_window={spec.sliding_window}")
    if problems:
        raise ValueError(
            f"GGUF export writes family {spec.family} as llama.cpp's {arch!r} architecture, "
            f"which has no {', '.join(problems)}; this model cannot be written"
        )
    return arch


def _llama3_rope_factors(spec: ModelSpec) -> np.ndarray:
    """convert_hf_to_gguf.py's ``rope_freqs`` for Llama 3.1 scaling: ``[head_dim / 2]``."""
    s = spec.rope_scaling
    assert s is not None
    dim = spec.resolved_head_dim
    freqs = 1.0 / (spec.rope_base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wl = s.original_max_position_embeddings / s.low_freq_factor
    high_wl = s.original_max_position_embeddings / s.high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wl:
            factors.append(1.0)
        elif wavelen > low_wl:
            factors.append(s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            factors.append(1.0 / ((1 - smooth) / s.factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def gguf_layer_name(native_suffix: str) -> str | None:
    """``attn.q_proj.weight`` -> ``attn_q.weight`` (the name inside ``blk.{i}.``), or None."""
    return _LAYER_NAMES.get(native_suffix)


def permutes_qk(arch: str) -> bool:
    """Whether q/k output rows go to Meta's interleaved layout (llama.cpp "normal" RoPE)."""
    return arch == "llama"


def gguf_tensors(
    state_dict: Mapping[str, torch.Tensor], spec: ModelSpec
) -> list[tuple[str, np.ndarray]]:
    """Native weights -> ``(GGUF name, float32 array)`` in llama.cpp's order and layout."""
    arch = gguf_arch(spec)
    adapters = [k for k in state_dict if ".lora_" in k or k.endswith(".magnitude")]
    if adapters:
        raise ValueError(
            f"the state dict holds LoRA/DoRA adapter weights ({adapters[0]}, ...); merge them "
            "first (tunesmith.modules.peft.get_merged_lora_ckpt), export the merged finetune "
            "output folder, or write the adapter with gguf_lora.export_lora_gguf"
        )
    hd = spec.resolved_head_dim
    out: list[tuple[str, np.ndarray]] = []
    unknown: list[str] = []
    bad: list[str] = []
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "layers":
            gguf_name = _LAYER_NAMES.get(".".join(parts[2:]))
            name = None if gguf_name is None else f"blk.{parts[1]}.{gguf_name}"
        else:
            name = _TOP_NAMES.get(key)
        if name is None:
            unknown.append(key)
            continue
        w = value.detach().to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(w).all()):
            bad.append(key)
        if permutes_qk(arch) and ".attn.q_proj." in key:
            w = permute_hf_to_meta(w, spec.num_heads, hd)
        elif permutes_qk(arch) and ".attn.k_proj." in key:
            w = permute_hf_to_meta(w, spec.num_kv_heads, hd)
        out.append((name, w.contiguous().numpy()))
    if unknown:
        raise ValueError(f"no GGUF {arch} tensor for native keys {unknown[:5]}")
    if bad:
        raise ValueError(
            f"weights {bad[:3]} hold NaN or inf values (a diverged finetune?); a GGUF of them "
            "would answer garbage: export an earlier checkpoint"
        )
    if spec.tie_embeddings:
        out = [(n, a) for n, a in out if n != "output.weight"]
    elif "output.weight" not in {n for n, _ in out}:
        raise ValueError(
            "the model's embeddings are untied but the state dict has no output.weight"
        )
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "llama3":
        out.insert(0, ("rope_freqs.weight", _llama3_rope_factors(spec)))
    return out


def encode(array: np.ndarray, out_type: str, *, output: bool = False) -> tuple[np.ndarray, Any]:
    """``(data, raw_dtype or None)`` for ``GGUFWriter.add_tensor``: the bytes llama.cpp's
    ``llama-quantize`` writes for the same float32 weights (``tests/models/
    test_gguf_quant_reference.py`` compares them with ggml's quantizer byte for byte).

    1-D tensors (norms, biases, RoPE factors) stay F32 as llama.cpp keeps them; a matrix whose
    rows do not split into the type's blocks (32 values) falls back to F16, as llama.cpp does.
    ``output`` marks the output projection (``output.weight``, or ``token_embd.weight`` when
    the embeddings are tied): in the 4/5-bit types llama.cpp keeps it at Q6_K, or Q8_0 when
    its rows do not split into 256-value super-blocks; the ``gguf`` package has no Q6_K
    quantizer, so it is Q8_0 here (llama.cpp's own fallback, one step more precise).
    """
    import gguf

    Q = gguf.GGMLQuantizationType
    if array.ndim == 1 or out_type == "f32":
        return array.astype(np.float32), None
    if out_type == "f16":
        return array.astype(np.float16), None
    if output and out_type in ("q4_0", "q4_1", "q5_0", "q5_1"):
        out_type = "q8_0"
    qtype = Q[out_type.upper()]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        return array.astype(np.float16), None
    if qtype in (Q.Q4_0, Q.Q5_0):
        # ggml starts its signed-max search at +0.0, so a block of zeros gets the scale
        # 0.0 / -8 = -0.0 whatever the zeros' signs; gguf.quants takes the block's own zero
        # (+0.0 for a block of -0.0): adding +0.0 turns -0.0 into +0.0 (values unchanged)
        array = array.astype(np.float32) + np.float32(0.0)
    return gguf.quants.quantize(array, qtype), qtype


def file_type(out_type: str) -> Any:
    """``general.file_type`` of an export in ``out_type``."""
    import gguf

    if out_type == "f32":
        return gguf.LlamaFileType.ALL_F32
    return gguf.LlamaFileType[f"MOSTLY_{out_type.upper()}"]


def write_hparams(writer: Any, spec: ModelSpec) -> None:
    """The ``{arch}.*`` hyper-parameter keys llama.cpp reads for ``spec``'s architecture."""
    import gguf

    writer.add_context_length(spec.max_seq_len)
    writer.add_embedding_length(spec.embed_dim)
    writer.add_block_count(spec.num_layers)
    writer.add_feed_forward_length(spec.intermediate_dim)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_dimension_count(spec.resolved_head_dim)
    if spec.resolved_head_dim != spec.embed_dim // spec.num_heads:
        writer.add_key_length(spec.resolved_head_dim)
        writer.add_value_length(spec.resolved_head_dim)
    writer.add_rope_freq_base(spec.rope_base)
    writer.add_layer_norm_rms_eps(spec.norm_eps)
    writer.add_vocab_size(spec.vocab_size)
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(spec.rope_scaling.factor)
