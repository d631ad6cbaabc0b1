"""Per-architecture pieces of GGUF export: which llama.cpp architecture a spec is, its
hyper-parameter keys, its tensor names/layout, and the tensor encodings.

llama.cpp architectures written (as ``convert_hf_to_gguf.py`` writes them):

* ``llama``: Llama 2 / 3 / 3.x, Code Llama, Mistral without a sliding window, SmolLM2. q/k rows
  are permuted from the native (Hugging Face rotate-half) layout to Meta's interleaved one,
  because llama.cpp applies "normal" (interleaved) RoPE to this architecture.
* ``qwen2``: Qwen2 / Qwen2.5 (q/k/v biases). NEOX RoPE: no permutation.
* ``qwen3``: Qwen3 dense (per-head q/k RMSNorm ``attn_q_norm`` / ``attn_k_norm``; head_dim is
  written as ``key_length`` / ``value_length``). NEOX RoPE: no permutation.
* ``gemma`` / ``gemma2`` / ``gemma3``: Gemma 1 / 2 / 3. Every norm weight ``w`` is written as
  ``w + 1`` (Gemma scales by ``1 + w``, llama.cpp by the stored weight); Gemma 2/3 sandwich
  norms, soft-caps, sliding windows (llama.cpp's fixed layer patterns), Gemma 3's local RoPE
  base; llama.cpp scales the embeddings by sqrt(dim) and derives the attention scale itself.
* Mixture of experts: Mixtral (``llama``) and Qwen3-MoE (``qwen3moe``): router
  ``ffn_gate_inp``, experts stacked ``ffn_{gate,up,down}_exps`` ([E, out, in] per expert).
* ``phi3``: Phi-3 mini. q/k/v stacked into ``attn_qkv``, gate above up in ``ffn_up``; longrope
  as ``rope_factors_long`` / ``rope_factors_short``. NEOX RoPE: no permutation. Phi-4-mini:
  partial rotary (``rope.dimension_count`` = rotary_dim).
* ``smollm3`` (NoPE every 4th layer), ``olmo2`` (OLMo 2 / 3: post-norms only, q/k normed over
  all heads), ``granite`` (Granite 3, dense Granite 4.0: multipliers), ``mistral3`` (Ministral
  3: query temperature scaling), ``gpt-oss`` (sinks, biases, clamped SwiGLU experts).

The per-architecture data (names, allowed features, RoPE layouts and patterns) is in
``_gguf_tables``; the hyper-parameter keys in ``_gguf_hparams``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tunesmith.models._gguf_tables import (
    ALLOWED,
    ARCH_OF_FAMILY,
    CORE_FIELDS,
    LAYER_NAMES,
    LLAMA4_CHUNK,
    LLAMA4_TEMPERATURE,
    LOCAL_ROPE,
    MOE_FAMILIES,
    NOPE_LAYER_STEP,
    NORM_ROPE,
    PARTIAL_ROTARY,
    RENAMES,
    REQUIRED,
    ROPE_SCALINGS,
    SLIDING,
    TOP_NAMES,
    UNTIED_ONLY,
    VARIANTS,
    YARN_LOG_MUL,
    YARN_ROUNDED,
)
from tunesmith.models.convert_weights import permute_hf_to_meta
from tunesmith.models.spec import ModelSpec, RopeScaling

__all__ = ["GGUF_TYPES", "encode", "file_type", "gguf_arch", "gguf_tensors"]

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
"""Output types the export accepts: what ``gguf.quants`` can quantize in Python. The k-quants
(Q4_K_M, Q6_K, ...) are not implemented by the ``gguf`` package; write f16 and run llama.cpp's
``llama-quantize`` (or ``tunesmith.models.gguf_export.llama_cpp_quantize`` when
``llama-cpp-python`` is installed) on it."""

_LAYER_NAMES = LAYER_NAMES  # the names tests and gguf_lora read
_TOP_NAMES = TOP_NAMES
# llama.cpp's Gemma attention scale is 1/sqrt(embed_dim / num_heads) for the 27B sizes it
# recognises by layer count, else 1/sqrt(head_dim); query_pre_attn_scalar must be that one
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _supported() -> str:
    by_arch: dict[str, list[str]] = {}
    for family, arch in ARCH_OF_FAMILY.items():
        by_arch.setdefault(arch, []).append(family)
    return "; ".join(f"{a} ({', '.join(f)})" for a, f in by_arch.items())


def _field_problem(spec: ModelSpec, field: dataclasses.Field[Any]) -> str | None:
    """``"name=value"`` (``"name set"`` for a structure) when ``spec``'s ``field`` is not
    its default, else None."""
    value = getattr(spec, field.name)
    if value == field.default:
        return None
    if isinstance(value, (bool, int, float)):
        return f"{field.name}={value}"
    return f"{field.name} set"


def gguf_arch(spec: ModelSpec) -> str:
    """The llama.cpp architecture name of ``spec``; ValueError (what is unsupported) if none."""
    arch = ARCH_OF_FAMILY.get(spec.family.upper())
    if arch is None:
        raise ValueError(
            f"GGUF export does not write family {spec.family}: it writes {_supported()}"
        )
    if arch in VARIANTS and getattr(spec, VARIANTS[arch][0]) is not None:
        arch = VARIANTS[arch][1]
    allowed = ALLOWED[arch]
    problems = []
    for field in dataclasses.fields(spec):
        if field.name in CORE_FIELDS or field.name in allowed:
            continue
        problem = _field_problem(spec, field)
        if problem:
            problems.append(problem)
    for name, want in REQUIRED.get(arch, {}).items():
        if getattr(spec, name) != want:
            problems.append(f"{name}={getattr(spec, name)} (it needs {name}={want})")
    if arch.startswith("gemma"):
        problems += _gemma_problems(spec, arch)
    elif spec.activation != "silu":
        problems.append(f"activation {spec.activation}")
    if spec.num_experts:
        problems += _moe_problems(spec, arch)
    problems += _rope_problems(spec, arch) + _window_problems(spec, arch)
    if problems:
        raise ValueError(
            f"GGUF export writes family {spec.family} as llama.cpp's {arch!r} architecture, "
            f"which has no {', '.join(problems)}; this model cannot be written"
        )
    return arch


def _rope_problems(spec: ModelSpec, arch: str) -> list[str]:
    """RoPE variants llama.cpp's graph for ``arch`` does not run."""
    problems = []
    rope_type = None if spec.rope_scaling is None else spec.rope_scaling.rope_type
    if rope_type not in ROPE_SCALINGS[arch]:
        problems.append(f"{rope_type} rope scaling")
    elif rope_type == "yarn":
        problems += _yarn_problems(spec.rope_scaling, arch)
    if spec.local_rope_scaling is not None:
        problems.append("local_rope_scaling")
    if spec.local_rope_base is not None and arch not in LOCAL_ROPE:
        problems.append("local_rope_base")
    if spec.rotary_dim is not None and arch not in PARTIAL_ROTARY:
        problems.append("partial RoPE (rotary_dim)")
    if spec.nope_layers:
        nope = set(spec.nope_layers)
        step = NOPE_LAYER_STEP.get(arch)
        every = arch == "granite" and nope == set(range(spec.num_layers))
        periodic = step is not None and nope == {
            i for i in range(spec.num_layers) if (i + 1) % step == 0
        }
        if not (every or periodic):
            pattern = f" (llama.cpp's: every {step}th layer)" if step else ""
            problems.append(f"NoPE layers {sorted(nope)}{pattern}")
    return problems


def _yarn_problems(s: RopeScaling | None, arch: str) -> list[str]:
    """YaRN llama.cpp runs: ramp bounds truncated to integers, cos / sin factor m(1) (or
    below m(1), through ``yarn_log_mul``, in the YARN_LOG_MUL graphs)."""
    assert s is not None
    own = 0.1 * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0
    a = s.cos_sin_scale
    if arch in YARN_LOG_MUL:
        ok, want = s.factor > 1 and 0 < a < own, f"below {own:.6g}"
    else:
        ok, want = math.isclose(a, own, rel_tol=1e-6), f"{own:.6g}"
    if (s.truncate or arch in YARN_ROUNDED) and ok:
        return []
    return [
        f"yarn with truncate={s.truncate}, attention factor {a:.6g} (llama.cpp's {arch} yarn: "
        f"truncate=True, attention factor {want})"
    ]


def _window_problems(spec: ModelSpec, arch: str) -> list[str]:
    """Sliding windows outside llama.cpp's fixed per-architecture layer pattern."""
    sliding = spec.sliding_window is not None and spec.sliding_window < spec.max_seq_len
    if not sliding:
        return []
    n = SLIDING.get(arch)
    if n is None:
        return [f"sliding_window={spec.sliding_window}"]
    if n == 1:  # llama.cpp ignores Phi-3's window
        return []
    want = tuple("sliding" if i % n < n - 1 else "full" for i in range(spec.num_layers))
    got = tuple(
        "sliding" if spec.layer_window(i) is not None else "full" for i in range(spec.num_layers)
    )
    if got != want:
        return [f"this sliding-window layer pattern (llama.cpp's: {n - 1} of every {n})"]
    return []


def _moe_problems(spec: ModelSpec, arch: str) -> list[str]:
    """What llama.cpp's Mixtral (``llama`` + experts) / ``qwen3moe`` / ``gpt-oss`` graphs
    cannot run: they route softmax -> top-k -> renormalised weights, every layer a plain MoE
    layer; gpt-oss with router / expert biases and SwiGLU clamped at 7 (alpha 1.702)."""
    families, biased = MOE_FAMILIES.get(arch, (set(), False))
    if arch == "llama4" and spec.family.upper() in families:
        return _llama4_problems(spec)
    problems = []
    if spec.family.upper() not in families:
        problems.append("mixture of experts")
    if spec.dense_layers or spec.shared_expert_dim:
        problems.append("dense or shared-expert layers")
    if spec.router_scoring != "softmax" or not spec.router_norm_topk:
        problems.append("routing other than softmax top-k renormalised")
    want = (True, True, 7.0) if biased else (False, False, None)
    if (spec.router_bias, spec.expert_bias, spec.swiglu_limit) != want:
        problems.append(
            "router / expert biases and a SwiGLU limit of 7"
            if biased
            else "router / expert biases or a SwiGLU limit"
        )
    if arch == "llama" and spec.moe_intermediate_dim not in (None, spec.intermediate_dim):
        problems.append("expert width other than intermediate_dim")
    return problems


def _llama4_problems(spec: ModelSpec) -> list[str]:
    """Llama 4 text as llama.cpp's ``llama4`` loader fixes it (``_gguf_tables``)."""
    problems = []
    moe = [i for i in range(spec.num_layers) if spec.is_moe_layer(i)]
    step = moe[0] + 1 if moe else 0
    if not moe or moe != list(range(step - 1, spec.num_layers, step)):
        problems.append(f"MoE layers {moe} (llama.cpp's: every n-th layer)")
    routing = (spec.router_scoring, spec.router_norm_topk, spec.router_weights_inputs)
    if routing != ("sigmoid", False, True) or spec.experts_per_token != 1:
        problems.append("routing other than top-1 sigmoid scaling the expert's input")
    if spec.shared_expert_dim != (spec.moe_intermediate_dim or spec.intermediate_dim):
        problems.append("a shared expert of another width than the experts")
    if spec.router_bias or spec.expert_bias or spec.swiglu_limit is not None:
        problems.append("router / expert biases or a SwiGLU limit")
    if spec.attn_chunk_size != LLAMA4_CHUNK or not spec.nope_layers:
        problems.append(
            f"attn_chunk_size={spec.attn_chunk_size} with NoPE layers {list(spec.nope_layers)} "
            f"(llama.cpp's: chunks of {LLAMA4_CHUNK}, NoPE every 4th layer)"
        )
    if spec.attn_temperature != LLAMA4_TEMPERATURE:
        problems.append(
            f"attn_temperature={spec.attn_temperature} (llama.cpp's: {LLAMA4_TEMPERATURE})"
        )
    return problems


def _gemma_problems(spec: ModelSpec, arch: str) -> list[str]:
    problems = []
    if spec.activation != "gelu_tanh":
        problems.append(f"activation {spec.activation}")
    if not (spec.norm_offset and spec.embed_scale and (spec.post_norms or arch == "gemma")):
        problems.append("Gemma without (1 + w) norms, embedding scaling and post-norms")
    if arch == "gemma2" and (spec.attn_softcap is None or spec.final_softcap is None):
        problems.append("Gemma 2 without both soft-caps (llama.cpp applies 50 / 30 then)")
    if spec.local_rope_base not in (None, 10_000.0):
        problems.append(f"local_rope_base={spec.local_rope_base} (llama.cpp uses 10000)")
    hd = spec.resolved_head_dim
    big = spec.num_layers == _GEMMA_27B_LAYERS.get(arch)
    dim = spec.embed_dim // spec.num_heads if big else hd
    if spec.query_pre_attn_scalar not in (None, float(dim)):
        problems.append(f"query_pre_attn_scalar={spec.query_pre_attn_scalar} (llama.cpp: {dim})")
    return problems


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
    return arch in NORM_ROPE


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
            gguf_name = RENAMES.get(arch, {}).get(gguf_name or "", gguf_name)
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
        if name.endswith("_exps.weight"):  # native [E, in, out] -> llama.cpp's [E, out, in]
            w = w.transpose(1, 2)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            w = w + 1.0  # llama.cpp's Gemma norms multiply by w; Gemma's by (1 + w)
        out.append((name, w.contiguous().numpy()))
    if unknown:
        raise ValueError(f"no GGUF {arch} tensor for native keys {unknown[:5]}")
    if bad:
        raise ValueError(
            f"weights {bad[:3]} hold NaN or inf values (a diverged finetune?); a GGUF of them "
            "would answer garbage: export an earlier checkpoint"
        )
    if spec.tie_embeddings and arch not in UNTIED_ONLY:
        out = [(n, a) for n, a in out if n != "output.weight"]
    elif spec.tie_embeddings:  # a loader without the fallback: the embeddings, written twice
        arrays = dict(out)
        if "output.weight" not in arrays:
            out.append(("output.weight", arrays["token_embd.weight"]))
    elif "output.weight" not in {n for n, _ in out}:
        raise ValueError(
            "the model's embeddings are untied but the state dict has no output.weight"
        )
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "llama3":
        out.insert(0, ("rope_freqs.weight", _llama3_rope_factors(spec)))
    if arch == "phi3":
        out = _phi3_fused(out)
        s = spec.rope_scaling
        if s is not None and s.rope_type == "longrope":
            if s.long_factor is None or s.short_factor is None:
                raise ValueError("longrope rope scaling needs long_factor and short_factor")
            out[:0] = [
                ("rope_factors_long.weight", np.asarray(s.long_factor, dtype=np.float32)),
                ("rope_factors_short.weight", np.asarray(s.short_factor, dtype=np.float32)),
            ]
    return out


def _phi3_fused(tensors: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """llama.cpp's ``phi3`` layout: q/k/v rows stacked into ``attn_qkv`` and the gate rows
    above the up rows in ``ffn_up`` (Phi-3's own ``qkv_proj`` / ``gate_up_proj``)."""
    arrays = dict(tensors)
    parts = {"attn_q": ("attn_qkv", 0), "attn_k": ("attn_qkv", 1), "attn_v": ("attn_qkv", 2),
             "ffn_gate": ("ffn_up", 0), "ffn_up": ("ffn_up", 1)}  # fmt: skip
    out: list[tuple[str, np.ndarray]] = []
    for name, array in tensors:
        prefix, _, rest = name.rpartition(".")[0].rpartition(".")
        if rest not in parts or not name.endswith(".weight"):
            out.append((name, array))
            continue
        fused, index = parts[rest]
        if index == 0:
            members = [k for k, (f, _) in parts.items() if f == fused]
            out.append((f"{prefix}.{fused}.weight",
                        np.concatenate([arrays[f"{prefix}.{m}.weight"] for m in members])))  # fmt: skip
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
