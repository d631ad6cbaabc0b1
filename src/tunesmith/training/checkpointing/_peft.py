"""Adapters on disk in Hugging Face PEFT's layout.

``adapter_model.safetensors`` holds ``base_model.model.<hf module>.lora_A.weight`` /
``lora_B.weight`` (and ``lora_magnitude_vector`` for DoRA); ``adapter_config.json``
names the base model, rank, alpha, dropout and target modules (HF names), so
``peft.PeftModel.from_pretrained(hf_model, folder)`` applies it. Key renaming goes
through ``tunesmith.models.convert_weights`` (which maps LoRA suffixes like their base
module); no q/k permutation is needed because native q/k already use the HF layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tunesmith.training.checkpointing._atomic import atomic_write_json
from tunesmith.training.checkpointing._files import load_weight_file, save_safetensors_file

__all__ = [
    "ADAPTER_MODEL_FNAME",
    "ADAPTER_CONFIG_FNAME",
    "native_adapter_to_peft",
    "peft_adapter_to_native",
    "write_peft_adapter",
    "read_adapter",
    "read_adapter_config",
]

ADAPTER_MODEL_FNAME = "adapter_model.safetensors"
ADAPTER_CONFIG_FNAME = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
# native suffix -> PEFT suffix
_SUFFIXES = {
    ".lora_a.weight": ".lora_A.weight",
    ".lora_b.weight": ".lora_B.weight",
    ".magnitude": ".lora_magnitude_vector",
}
_DEFAULT_MODEL_TYPE = "LLAMA3"


def _model_type(ctx: Mapping[str, Any]) -> str:
    return str(ctx.get("model_type") or _DEFAULT_MODEL_TYPE)


def native_adapter_to_peft(
    adapter: Mapping[str, torch.Tensor], model_type: str, hf_config: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Native adapter keys (``layers.0.attn.q_proj.lora_a.weight``) -> PEFT keys."""
    from tunesmith.models.convert_weights import native_to_hf

    hf = native_to_hf(dict(adapter), model_type, dict(hf_config or {}))
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        for native_suffix, peft_suffix in _SUFFIXES.items():
            if key.endswith(native_suffix):
                key = key[: -len(native_suffix)] + peft_suffix
                break
        out[_PEFT_PREFIX + key] = value
    return out


def peft_adapter_to_native(
    adapter: Mapping[str, torch.Tensor], model_type: str, hf_config: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`native_adapter_to_peft` (also accepts keys without the prefix)."""
    from tunesmith.models.convert_weights import hf_to_native

    renamed: dict[str, torch.Tensor] = {}
    for key, value in adapter.items():
        if key.startswith(_PEFT_PREFIX):
            key = key[len(_PEFT_PREFIX) :]
        key = key.replace(".default.", ".")  # adapter-name segment some PEFT versions keep
        for native_suffix, peft_suffix in _SUFFIXES.items():
            if key.endswith(peft_suffix):
                key = key[: -len(peft_suffix)] + native_suffix
                break
            if key.endswith(peft_suffix + ".weight"):  # DoRA magnitude stored as a module
                key = key[: -len(peft_suffix + ".weight")] + native_suffix
                break
        renamed[key] = value
    cfg = dict(hf_config or {})
    cfg.pop("tie_word_embeddings", None)  # keep an lm_head adapter even for tied models
    return hf_to_native(renamed, model_type, cfg)


def _hf_target_modules(peft_sd: Mapping[str, Any]) -> list[str]:
    names = set()
    for key in peft_sd:
        module = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        names.add(module.rsplit(".", 1)[-1])
    return sorted(names)


def write_peft_adapter(
    adapter: Mapping[str, torch.Tensor],
    adapter_config: Mapping[str, Any] | None,
    folder: Path,
    ctx: Mapping[str, Any],
) -> None:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into ``folder``.

    ``adapter_config``: ``r`` and ``lora_alpha`` (required), optional ``lora_dropout``,
    ``use_dora``, ``target_modules`` (ignored: derived from the weights, in HF names).
    """
    if adapter_config is None or "r" not in adapter_config or "lora_alpha" not in adapter_config:
        raise ValueError(
            "save_checkpoint: writing a PEFT adapter needs state_dict['adapter_config'] with "
            "'r' and 'lora_alpha' (e.g. {'r': 8, 'lora_alpha': 16})"
        )
    peft_sd = native_adapter_to_peft(adapter, _model_type(ctx), ctx.get("hf_config"))
    save_safetensors_file(peft_sd, folder / ADAPTER_MODEL_FNAME)
    use_dora = bool(adapter_config.get("use_dora")) or any(
        k.endswith("lora_magnitude_vector") for k in peft_sd
    )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(ctx.get("base_model", "")),
        "r": int(adapter_config["r"]),
        "lora_alpha": float(adapter_config["lora_alpha"]),
        "lora_dropout": float(adapter_config.get("lora_dropout", 0.0)),
        "target_modules": _hf_target_modules(peft_sd),
        "use_dora": use_dora,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    atomic_write_json(folder / ADAPTER_CONFIG_FNAME, config)


def read_adapter(path: Path, ctx: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Native adapter weights from a PEFT folder / ``adapter_model.safetensors`` or a native
    ``.pt`` adapter file (torchtune's ``adapter_*.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_MODEL_FNAME
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpointer.adapter_checkpoint: {str(path)!r} does not exist; point it at a PEFT "
            f"folder (with {ADAPTER_MODEL_FNAME}) or an adapter file"
        )
    sd = load_weight_file(path)
    if any(k.startswith(_PEFT_PREFIX) or ".lora_A." in k for k in sd):
        return peft_adapter_to_native(sd, _model_type(ctx), ctx.get("hf_config"))
    return sd


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The ``adapter_config.json`` of a PEFT folder."""
    return json.loads((Path(folder) / ADAPTER_CONFIG_FNAME).read_text())
