"""Write a LoRA adapter as a GGUF LoRA file, as llama.cpp's ``convert_lora_to_gguf.py`` does.

llama.cpp applies it on top of the base model's GGUF (``llama-cli -m base.gguf --lora
adapter.gguf``; ``llama_cpp.Llama(model_path=..., lora_path=...)``) and adds
``scale * alpha / rank * B @ A`` to each adapted matrix. The file holds:

* ``general.architecture`` (the base model's: ``llama``, ``qwen2``, ``qwen3``),
  ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha``;
* per adapted matrix ``blk.{i}.attn_q.weight.lora_a`` (PEFT's ``lora_A`` ``[rank, in]``) and
  ``...lora_b`` (``lora_B`` ``[out, rank]``), with the same q/k row permutation as the base
  weights for the ``llama`` architecture (applied to ``lora_b``, the rows of ``B @ A``).

Phi-3's q/k/v and gate/up adapters become one ``attn_qkv`` / ``ffn_up`` adapter each
(stacked A, block-diagonal B, as in the PEFT file). DoRA adapters (a per-column magnitude
llama.cpp has no place for) and adapters on the embeddings are refused, as are PEFT's rsLoRA / rank or alpha patterns (``load_peft_adapter``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tunesmith.models._gguf_arch import encode, gguf_arch, gguf_layer_name, permutes_qk
from tunesmith.models.convert_weights import permute_hf_to_meta
from tunesmith.models.spec import ModelSpec

__all__ = ["export_lora_gguf", "export_peft_adapter_to_gguf", "lora_gguf_tensors"]

LORA_GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")


def lora_gguf_tensors(
    adapter: Mapping[str, torch.Tensor], spec: ModelSpec
) -> list[tuple[str, Any]]:
    """Native adapter keys (``layers.{i}.attn.q_proj.lora_a.weight`` ...) -> ``(GGUF name,
    float32 array)``: ``lora_a [rank, in]``, ``lora_b [out, rank]``."""
    arch = gguf_arch(spec)
    hd = spec.resolved_head_dim
    out = []
    if arch == "phi3":  # q/k/v and gate/up adapters -> one attn_qkv / ffn_up adapter each
        fused, adapter = _phi3_fused(adapter, spec)
        out.extend(fused)
    for key, value in adapter.items():
        if key.endswith(".magnitude"):
            raise ValueError(
                f"{key}: DoRA adapters cannot be written as GGUF LoRA (llama.cpp has no "
                "magnitude vector); merge the adapter and export the merged model instead"
            )
        module, sep, part = key.rpartition(".lora_")
        if not sep or part not in ("a.weight", "b.weight"):
            raise ValueError(f"{key} is not a LoRA weight (lora_a / lora_b)")
        parts = module.split(".")
        if parts[0] == "layers":
            base = gguf_layer_name(".".join(parts[2:]) + ".weight")
            name = None if base is None else f"blk.{parts[1]}.{base}"
        else:
            name = "output.weight" if module == "output" else None
        if name is None:
            raise ValueError(f"{key}: no GGUF {arch} tensor for module {module!r}")
        w = value.detach().to(device="cpu", dtype=torch.float32)
        if part == "b.weight" and permutes_qk(arch) and module.endswith("attn.q_proj"):
            w = permute_hf_to_meta(w, spec.num_heads, hd)
        elif part == "b.weight" and permutes_qk(arch) and module.endswith("attn.k_proj"):
            w = permute_hf_to_meta(w, spec.num_kv_heads, hd)
        out.append((f"{name}.lora_{part[0]}", w.contiguous().numpy()))
    if not out:
        raise ValueError("the adapter holds no LoRA weights")
    return out


def _phi3_fused(
    adapter: Mapping[str, torch.Tensor], spec: ModelSpec
) -> tuple[list[tuple[str, Any]], dict[str, torch.Tensor]]:
    """Phi-3's q/k/v and w1/w3 adapters as llama.cpp's fused ``attn_qkv`` / ``ffn_up`` LoRA
    tensors (the block form of :mod:`tunesmith.models._peft_fused`: stacked A ``[k r, in]``,
    block-diagonal B ``[out, k r]``). llama.cpp scales each tensor by ``alpha / rank`` with
    the tensor's own rank, ``k r`` here, so B carries the factor ``k`` that keeps the parts'
    ``alpha / r``. Returns those tensors and the adapter without the fused parts."""
    from tunesmith.models._peft_fused import FUSED_PARTS, fuse_lora

    hd = spec.resolved_head_dim
    sizes = {
        "self_attn.qkv_proj": [spec.num_heads * hd, spec.num_kv_heads * hd, spec.num_kv_heads * hd],
        "mlp.gate_up_proj": [spec.intermediate_dim, spec.intermediate_dim],
    }
    gguf_names = {"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
    groups: dict[tuple[str, str], dict[str, dict[str, torch.Tensor]]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in adapter.items():
        bits = key.split(".")
        hit = None
        if len(bits) >= 5 and bits[0] == "layers":
            for fused, names in FUSED_PARTS.items():
                parent = "attn" if fused.startswith("self_attn") else "mlp"
                if bits[2] == parent and bits[3] in names:
                    hit = fused
        if hit is None:
            rest[key] = value
            continue
        suffix = ".".join(bits[4:])
        groups.setdefault((bits[1], hit), {}).setdefault(suffix, {})[bits[3]] = value
    out: list[tuple[str, Any]] = []
    for (layer, fused), parts in groups.items():
        if "magnitude" in parts:
            raise ValueError(
                f"layers.{layer}: DoRA adapters cannot be written as GGUF LoRA (llama.cpp has "
                "no magnitude vector); merge the adapter and export the merged model instead"
            )
        rank = next(iter(parts["lora_a.weight"].values())).shape[0]
        tensors = fuse_lora(fused, parts, sizes[fused], f"layers.{layer}")
        a, b = tensors["lora_a.weight"], tensors["lora_b.weight"]
        b = b * (a.shape[0] / rank)  # llama.cpp's alpha / (k r) -> the parts' alpha / r
        name = f"blk.{layer}.{gguf_names[fused]}.weight"
        for part, w in (("a", a), ("b", b)):
            w = w.detach().to(device="cpu", dtype=torch.float32).contiguous()
            out.append((f"{name}.lora_{part}", w.numpy()))
    return out, rest


def export_lora_gguf(
    path: str | os.PathLike[str],
    adapter: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    alpha: float,
    *,
    out_type: str = "f16",
    name: str = "tunesmith LoRA",
) -> Path:
    """Write a native LoRA adapter state dict (``spec``'s base model) as a GGUF LoRA file.

    ``alpha``: the LoRA alpha (scaling ``alpha / rank``, as in tunesmith and PEFT).
    ``out_type``: f32, f16, bf16 or q8_0 (a matrix whose rows are not a multiple of 32,
    e.g. every ``lora_b`` of rank 8, falls back to F16).
    """
    import gguf

    out_type = out_type.lower()
    if out_type not in LORA_GGUF_TYPES:
        raise ValueError(f"out_type {out_type!r}: a GGUF LoRA is one of {LORA_GGUF_TYPES}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose a new file (nothing is overwritten)")
    tensors = lora_gguf_tensors(adapter, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf_arch(spec))
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for tensor_name, array in tensors:
        data, raw_dtype = encode(array, out_type)
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def export_peft_adapter_to_gguf(
    adapter_dir: str | os.PathLike[str],
    base_config: str | os.PathLike[str] | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    out_type: str = "f16",
) -> Path:
    """A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, as a
    LoRA finetune saves it) -> GGUF LoRA. ``base_config``: the base model's ``config.json``
    (its folder, the file, or the dict)."""
    from tunesmith.models.convert_weights import spec_from_hf_config
    from tunesmith.models.peft_format import load_peft_adapter

    if isinstance(base_config, Mapping):
        hf_config = dict(base_config)
    else:
        cfg_path = Path(base_config)
        cfg_path = cfg_path / "config.json" if cfg_path.is_dir() else cfg_path
        hf_config = json.loads(cfg_path.read_text())
    spec = spec_from_hf_config(hf_config)
    folder = Path(adapter_dir)
    adapter, config = load_peft_adapter(folder, spec.family, hf_config)
    if config.get("use_dora"):
        raise ValueError(f"{folder}: use_dora adapters cannot be written as GGUF LoRA")
    name = f"{folder.name} (LoRA)"
    return export_lora_gguf(
        path, adapter, spec, float(config["lora_alpha"]), out_type=out_type, name=name
    )
