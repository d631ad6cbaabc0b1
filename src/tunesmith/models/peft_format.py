"""Native LoRA / DoRA adapters <-> Hugging Face PEFT's saved adapter format.

PEFT saves ``adapter_model.safetensors`` with keys like
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` (``lora_B.weight``,
``lora_magnitude_vector`` for DoRA) next to an ``adapter_config.json``. The module renames
(``attn.q_proj`` -> ``self_attn.q_proj``, ``mlp.w1`` -> ``mlp.gate_proj``, ``output`` ->
``lm_head``, Phi-3's fused ``qkv_proj`` / ``gate_up_proj``) come from
:mod:`tunesmith.models.convert_weights`; this module only adds PEFT's prefix and parameter
names. Native q/k use the Hugging Face layout, so no permutation is involved.

Both files are written atomically (temp file + fsync + rename, :mod:`tunesmith.utils`),
so the checkpointers in ``tunesmith.training.checkpointing`` save and load adapters
through :func:`save_peft_adapter` / :func:`load_peft_adapter` too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from tunesmith.models._peft_experts import (
    EXPERT_TARGET_PARAMETERS,
    is_peft_expert_key,
    native_expert_adapters_to_peft,
    peft_expert_adapters_to_native,
)
from tunesmith.models._peft_fused import (
    FUSED_FAMILIES,
    FUSED_METADATA_KEY,
    block_modules,
    check_patterns,
    fused_patterns,
    read_block_modules,
)
from tunesmith.models.convert_weights import hf_to_native, native_to_hf, ties_embeddings
from tunesmith.utils._atomic import atomic_save_safetensors, atomic_write_json
from tunesmith.utils._integrity import check_safetensors

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "PEFT_PREFIX",
    "load_peft_adapter",
    "native_to_peft",
    "peft_adapter_config",
    "peft_to_native",
    "save_peft_adapter",
    "target_modules_from_adapter",
]

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"

# native parameter suffix -> PEFT parameter suffix (as PEFT writes them to disk)
_TO_PEFT = {
    "lora_a.weight": "lora_A.weight",
    "lora_b.weight": "lora_B.weight",
    "magnitude": "lora_magnitude_vector",
}
# PEFT suffixes as found on disk or in a live model's state dict (adapter name "default")
_FROM_PEFT = {
    "lora_A.weight": "lora_a.weight",
    "lora_B.weight": "lora_b.weight",
    "lora_magnitude_vector": "magnitude",
    "lora_magnitude_vector.weight": "magnitude",
    "lora_A.default.weight": "lora_a.weight",
    "lora_B.default.weight": "lora_b.weight",
    "lora_magnitude_vector.default.weight": "magnitude",
}
_TASK_TYPES = {"REWARD": "SEQ_CLS"}


def _split_suffix(key: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    for suffix in sorted(table, key=len, reverse=True):
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], table[suffix]
    return None


def native_to_peft(
    adapter_state_dict: Mapping[str, Tensor], model_type: Any, hf_config: Any = None
) -> dict[str, Tensor]:
    """Native adapter keys (``layers.0.attn.q_proj.lora_a.weight``, ...) -> PEFT's saved keys.

    ``adapter_state_dict`` must hold adapter entries only (see
    ``tunesmith.modules.peft.get_adapter_state_dict``). ``hf_config`` is needed for Phi-3 /
    Phi-4 (fused projections).
    """
    for key in adapter_state_dict:
        if _split_suffix(key, {k: k for k in _TO_PEFT}) is None:
            raise ValueError(
                f"native_to_peft: {key!r} is not a LoRA/DoRA adapter key (expected a name ending "
                "in .lora_a.weight, .lora_b.weight or .magnitude); pass only the adapter weights"
            )
    kind = str(getattr(model_type, "name", model_type)).upper()
    experts, adapter_state_dict = native_expert_adapters_to_peft(
        adapter_state_dict, model_type, PEFT_PREFIX
    )
    if not adapter_state_dict:
        return experts
    if kind == "LLAMA3_VISION":
        from tunesmith.models._convert_vision import mllama_native_to_hf

        # PEFT names modules as the transformers model holds them, not as its files do
        hf = mllama_native_to_hf(adapter_state_dict, hf_config, layout="module")
    elif kind in ("QWEN2_5_VL", "QWEN3_VL"):
        from tunesmith.models._convert_qwen_vl import qwen_vl_native_to_hf

        hf = qwen_vl_native_to_hf(adapter_state_dict, hf_config, layout="module")
    else:
        hf = native_to_hf(adapter_state_dict, model_type, hf_config)
    out: dict[str, Tensor] = {}
    for key, value in hf.items():
        module, suffix = _split_suffix(key, _TO_PEFT)  # type: ignore[misc]
        out[f"{PEFT_PREFIX}{module}.{suffix}"] = value
    return {**out, **experts}


def peft_to_native(
    peft_state_dict: Mapping[str, Tensor],
    model_type: Any,
    hf_config: Any = None,
    fused_blocks: Mapping[str, list[str]] | None = None,
) -> dict[str, Tensor]:
    """PEFT adapter keys (from ``adapter_model.safetensors``) -> native adapter keys.

    ``fused_blocks`` names Phi-3 fused modules saved in the block form (per-part ``A``,
    block-diagonal ``B``; :mod:`tunesmith.models._peft_fused`), from the file's metadata.

    Raises:
        ValueError: for entries that are not LoRA / DoRA weights (e.g. ``modules_to_save``
            copies or bias terms), which a native adapter cannot hold.
    """
    experts, peft_state_dict = peft_expert_adapters_to_native(peft_state_dict, hf_config)
    names = {k[len(PEFT_PREFIX) :] if k.startswith(PEFT_PREFIX) else k: k for k in peft_state_dict}
    if ties_embeddings(hf_config) and any(n.startswith("lm_head.") for n in names):
        # PEFT wraps the tied lm_head and adds B @ A to the logits only (the embedding
        # lookup is unchanged); a native tied model has no output layer to hold that, and
        # dropping it would silently change the model. (Checked first: PEFT also saves a
        # copy of the tied weight as lm_head.base_layer.weight.)
        raise ValueError(
            "The PEFT adapter has lm_head weights but the base model ties lm_head to the "
            "token embeddings (tie_word_embeddings=true): a native tied model has no separate "
            "output layer to carry them. Untie the base model first (transformers: "
            "from_pretrained(..., tie_word_embeddings=False) then save_pretrained) and use that "
            "as the base, or train the adapter without lm_head."
        )
    hf: dict[str, Tensor] = {}
    for name, key in names.items():
        hit = _split_suffix(name, _FROM_PEFT)
        if hit is None:
            raise ValueError(
                f"PEFT adapter entry {key!r} is not a LoRA/DoRA weight (lora_A, lora_B, "
                "lora_magnitude_vector); adapters with modules_to_save, trainable biases or "
                "other PEFT methods cannot be loaded as a native LoRA adapter"
            )
        hf[f"{hit[0]}.{hit[1]}"] = peft_state_dict[key]
    native = hf_to_native(hf, model_type, hf_config, fused_blocks) if hf else {}
    return {**native, **experts}


def target_modules_from_adapter(peft_state_dict: Iterable[str]) -> list[str]:
    """The Hugging Face module names (``q_proj``, ``gate_proj``, ...) an adapter covers.

    A module named by an index in a ``Sequential`` (Qwen2.5-VL's ``merger.mlp.0``) or by
    the bare ``proj`` (its ViT's ``attn.proj``) is named with its parent (``mlp.0``,
    ``attn.proj``): PEFT matches names by suffix, and ``0`` would also match every
    ``layers.0``, ``proj`` the ViT's ``patch_embed.proj``."""
    names = set()
    for key in peft_state_dict:
        if is_peft_expert_key(key):  # target_parameters, not target_modules
            continue
        hit = _split_suffix(key, _FROM_PEFT)
        if hit is not None:
            parts = hit[0].split(".")
            ambiguous = parts[-1].isdigit() or parts[-1] == "proj"
            names.add(".".join(parts[-2:]) if ambiguous else parts[-1])
    return sorted(names)


def peft_adapter_config(
    model_type: Any,
    base_model_name_or_path: str | None,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Iterable[str] = (),
    use_dora: bool = False,
    task_type: str | None = None,
    revision: str | None = None,
    target_parameters: Iterable[str] = (),
) -> dict[str, Any]:
    """An ``adapter_config.json`` dict that ``peft.PeftModel.from_pretrained`` accepts.

    ``target_modules`` are Hugging Face module names (use :func:`target_modules_from_adapter`
    on the converted weights). ``task_type`` defaults to ``CAUSAL_LM`` (``SEQ_CLS`` for
    ``REWARD`` models). ``base_model_name_or_path`` (+ ``revision``) is what
    ``peft.AutoPeftModelForCausalLM`` loads the base from: a repo id or a model folder.
    """
    targets = sorted(set(target_modules))
    parameters = sorted(set(target_parameters))
    if not targets and not parameters:
        raise ValueError("peft_adapter_config: target_modules is empty; the adapter covers nothing")
    name = str(getattr(model_type, "name", model_type)).upper()
    alpha_value: float | int = int(alpha) if float(alpha).is_integer() else float(alpha)
    return {
        "peft_type": "LORA",
        "task_type": task_type or _TASK_TYPES.get(name, "CAUSAL_LM"),
        "base_model_name_or_path": base_model_name_or_path,
        "revision": revision,
        "r": int(rank),
        "lora_alpha": alpha_value,
        "lora_dropout": float(dropout),
        "target_modules": targets,
        **({"target_parameters": parameters} if parameters else {}),
        "use_dora": bool(use_dora),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_peft_adapter(
    folder: str | Path,
    adapter_state_dict: Mapping[str, Tensor],
    *,
    model_type: Any,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    hf_config: Any = None,
    base_model_name_or_path: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into ``folder``.

    DoRA is detected from ``magnitude`` keys. Each file is written atomically, so a crash
    leaves the previous file or the new one. Returns the written config.
    """
    folder = Path(folder)
    peft_sd = native_to_peft(adapter_state_dict, model_type, hf_config)
    family = str(getattr(model_type, "name", model_type)).upper()
    blocks = block_modules(adapter_state_dict, family) if family in FUSED_FAMILIES else {}
    config = peft_adapter_config(
        model_type,
        base_model_name_or_path,
        rank,
        alpha,
        dropout,
        target_modules_from_adapter(peft_sd),
        use_dora=any(k.endswith(".magnitude") for k in adapter_state_dict),
        revision=revision,
        target_parameters=EXPERT_TARGET_PARAMETERS
        if any(".mlp.experts." in k for k in adapter_state_dict)
        else (),
    )
    metadata = {"format": "pt"}
    if blocks:  # Phi-3 parts with their own A: one fused adapter of rank k r (block-diagonal B)
        config["rank_pattern"], config["alpha_pattern"] = fused_patterns(blocks, rank, alpha)
        metadata[FUSED_METADATA_KEY] = json.dumps(blocks, sort_keys=True)
    atomic_save_safetensors(peft_sd, folder / ADAPTER_WEIGHTS_NAME, metadata)
    atomic_write_json(folder / ADAPTER_CONFIG_NAME, config)
    return config


def load_peft_adapter(
    folder: str | Path, model_type: Any, hf_config: Any = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a PEFT adapter -> ``(native adapter state dict, adapter_config dict)``.

    ``folder`` is the adapter folder or its ``adapter_model.safetensors`` (the
    ``adapter_config.json`` beside it is required: it holds the scaling).
    """
    from safetensors.torch import load_file

    path = Path(folder)
    weights = path if path.is_file() else path / ADAPTER_WEIGHTS_NAME
    config_path = weights.parent / ADAPTER_CONFIG_NAME
    if not weights.is_file() or not config_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a PEFT adapter: expected {ADAPTER_WEIGHTS_NAME} and "
            f"{ADAPTER_CONFIG_NAME} in {weights.parent}"
        )
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(
            f"{config_path}: peft_type {config.get('peft_type')!r} is not supported; only LORA "
            "(incl. use_dora) adapters load as native adapters"
        )
    from safetensors import safe_open

    check_safetensors(weights)
    with safe_open(str(weights), framework="pt") as handle:
        blocks = read_block_modules(handle.metadata())
    patterns = ("rank_pattern", "alpha_pattern")
    if blocks:  # our own block-form Phi-3 adapter: its patterns must be exactly those
        check_patterns(config, blocks, str(config_path))
    unsupported = {
        key: config[key]
        for key in ("use_rslora", *(() if blocks else patterns), "modules_to_save")
        if config.get(key)
    }
    if unsupported:
        raise ValueError(
            f"{config_path}: {unsupported} change LoRA's scaling or add full weights, which a "
            "native adapter (one rank, scaling alpha / rank) cannot represent; merge the "
            "adapter in PEFT (merge_and_unload) and load the merged model instead"
        )
    return peft_to_native(load_file(str(weights)), model_type, hf_config, blocks), config
