"""Helpers around adapter modules: find, freeze, extract, merge, disable, validate.

Names and semantics follow ``torchtune.modules.peft`` so torchtune recipes and user code work
unchanged. Adapter state-dict keys are recognised by ``lora`` / ``magnitude`` in their name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

# Attention projections LoRA can be applied to (torchtune's names).
LORA_ATTN_MODULES = Literal["q_proj", "k_proj", "v_proj", "output_proj"]

_ADAPTER_SUFFIXES = ("lora_a.weight", "lora_b.weight", "magnitude")


@runtime_checkable
class AdapterModule(Protocol):
    """An ``nn.Module`` holding adapter weights: it lists their names relative to itself."""

    def adapter_params(self) -> list[str]:
        """Names of the adapter's parameters, e.g. ``["lora_a.weight", "lora_b.weight"]``."""
        ...


def is_adapter_key(key: str) -> bool:
    """True for a LoRA / DoRA parameter name: it ends in ``lora_a.weight``, ``lora_b.weight``
    or ``magnitude``."""
    return any(key == s or key.endswith("." + s) for s in _ADAPTER_SUFFIXES)


def _is_adapter_key(key: str) -> bool:
    # torchtune's looser test ("lora" / "magnitude" anywhere in the name), kept for its helpers
    return "lora" in key or "magnitude" in key


def _adapter_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if callable(getattr(module, "adapter_params", None)):
            yield name, module


def get_adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter parameter of ``model`` by its fully qualified name."""
    params: dict[str, nn.Parameter] = {}
    for module_name, module in _adapter_modules(model):
        wanted = list(module.adapter_params())
        own = dict(module.named_parameters(recurse=True))
        for name in wanted:
            if name not in own:
                raise RuntimeError(
                    f"{type(module).__name__} at '{module_name}' lists adapter param '{name}' "
                    "but has no such parameter"
                )
            params[f"{module_name}.{name}" if module_name else name] = own[name]
    return params


def set_trainable_params(model: nn.Module, adapter_params: dict[str, Any] | Iterable[str]) -> None:
    """Make exactly the parameters named in ``adapter_params`` trainable; freeze the rest."""
    names = set(adapter_params)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def get_lora_module_names(
    lora_attn_modules: list[str], apply_lora_to_mlp: bool, apply_lora_to_output: bool
) -> list[str]:
    """Local names of the modules that carry LoRA (``q_proj``, ..., ``w1``, ``output``)."""
    names = list(lora_attn_modules)
    if apply_lora_to_mlp:
        names += ["w1", "w2", "w3"]
    if apply_lora_to_output:
        names.append("output")
    return names


def get_adapter_state_dict(
    state_dict: dict[str, Any], device: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """The adapter entries (``lora`` / ``magnitude`` keys) of a full state dict, on ``device``."""
    return {
        k: (v.to(device) if device is not None else v)
        for k, v in state_dict.items()
        if _is_adapter_key(k)
    }


def _lora_module_prefixes(state_dict: dict[str, Any]) -> set[str]:
    """Key prefixes (``"layers.0.attn.q_proj."``, or ``""`` at top level) of adapter modules."""
    prefixes = set()
    for key in state_dict:
        for suffix in _ADAPTER_SUFFIXES:
            if key == suffix or key.endswith("." + suffix):
                prefixes.add(key[: -len(suffix)])
    return prefixes


@torch.no_grad()
def get_merged_lora_ckpt(state_dict: dict[str, Any], rank: int, alpha: float) -> dict[str, Any]:
    """Fold every LoRA / DoRA adapter into its base ``weight`` and drop the adapter keys.

    Modifies and returns ``state_dict`` (copy it first to keep the original). The merge is done
    in fp32 and cast back to the base weight's dtype. DoRA:
    ``W' = m * (W + s B A) / ||W + s B A||`` (norm over the input dim), ``s = alpha / rank``.
    """
    scaling = alpha / rank
    prefixes = sorted(_lora_module_prefixes(state_dict))
    for prefix in prefixes:  # per-expert adapters (``LoRAGroupedExperts``): stacked 3-D factors
        a = state_dict.get(f"{prefix}lora_a.weight")
        if prefix.endswith(".gate_up.") and a is not None and a.dim() == 3:
            from tunesmith.modules.peft.lora_experts import merge_expert_lora

            merge_expert_lora(state_dict, prefix[: -len("gate_up.")], scaling)
    for prefix in sorted(_lora_module_prefixes(state_dict)):
        a_key, b_key = f"{prefix}lora_a.weight", f"{prefix}lora_b.weight"
        w_key, m_key = f"{prefix}weight", f"{prefix}magnitude"
        if a_key not in state_dict or b_key not in state_dict or w_key not in state_dict:
            missing = [k for k in (w_key, a_key, b_key) if k not in state_dict]
            raise KeyError(
                f"Cannot merge the adapter at '{prefix.rstrip('.')}': the state dict lacks {missing}"
            )
        base = state_dict[w_key]
        merged = base.float() + scaling * (state_dict[b_key].float() @ state_dict[a_key].float())
        magnitude = state_dict.pop(m_key, None)
        if magnitude is not None:
            norm = torch.linalg.norm(merged, dim=1, keepdim=True)
            merged = merged * (magnitude.float().unsqueeze(1) / norm)
        state_dict[w_key] = merged.to(base.dtype)
        del state_dict[a_key], state_dict[b_key]
    return state_dict


@torch.no_grad()
def merge_lora_weights(model: nn.Module) -> nn.Module:
    """Replace every LoRA / DoRA module in ``model`` by a plain ``nn.Linear`` with merged weights.

    In place; returns ``model``. Afterwards the state dict has base keys only (NF4 bases come
    out dequantized in their original dtype).
    """
    from tunesmith.modules.peft.lora import LoRALinear
    from tunesmith.modules.peft.lora_experts import LoRAGroupedExperts

    kinds = (LoRALinear, LoRAGroupedExperts)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    for name, module in targets:
        linear = module.to_linear() if isinstance(module, LoRALinear) else module.to_experts()
        linear.train(module.training)
        if not name:
            raise ValueError("merge_lora_weights needs a model that contains LoRA layers, not one")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, linear)
    return model


@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[None]:
    """Run the base model only: adapters with a ``disabled`` flag are switched off, then back.

    Used e.g. for the DPO reference model (policy = base + LoRA, reference = base).
    """
    switched = []
    for _, module in _adapter_modules(model):
        if hasattr(module, "disabled"):
            switched.append((module, module.disabled))
            module.disabled = True
    try:
        yield
    finally:
        for module, previous in switched:
            module.disabled = previous


class LoRAKeyMismatchError(RuntimeError, AssertionError):
    """Checkpoint keys that do not fit a LoRA model (an ``AssertionError`` too, as torchtune's
    check raised)."""


def validate_missing_and_unexpected_for_lora(
    lora_attn_modules: list[str] | None = None,
    apply_lora_to_mlp: bool | None = None,
    apply_lora_to_output: bool | None = None,
    base_missing: list[str] | None = None,
    base_unexpected: list[str] | None = None,
    lora_missing: list[str] | None = None,
    lora_unexpected: list[str] | None = None,
    *,
    state_dict_keys: list[str] | None = None,
) -> None:
    """Check the ``(missing, unexpected)`` keys of ``load_state_dict(strict=False)`` calls.

    The base checkpoint may only miss adapter keys; the adapter checkpoint may only miss base
    keys; neither may bring unexpected keys. Which keys are adapter keys: from
    ``state_dict_keys`` (the model's own keys) or, as torchtune does (its positional order),
    from ``lora_attn_modules`` / ``apply_lora_to_mlp`` / ``apply_lora_to_output``.

    Raises:
        LoRAKeyMismatchError: naming each offending key.
    """
    errors: list[str] = []
    if state_dict_keys is not None:
        adapter_keys = {k for k in state_dict_keys if _is_adapter_key(k)}
        base_keys = set(state_dict_keys) - adapter_keys

        def is_adapter(key: str) -> bool:
            return key in adapter_keys or (key not in base_keys and _is_adapter_key(key))

    elif lora_attn_modules is not None:
        modules = get_lora_module_names(
            lora_attn_modules, bool(apply_lora_to_mlp), bool(apply_lora_to_output)
        )

        def is_adapter(key: str) -> bool:
            return any(f"{m}.lora" in key or f"{m}.magnitude" in key for m in modules)

    else:
        is_adapter = _is_adapter_key
    for key in base_missing or []:
        if not is_adapter(key):
            errors.append(f"- Missing non-LoRA key '{key}' from the base model checkpoint")
    for key in lora_missing or []:
        if is_adapter(key):
            errors.append(f"- Missing LoRA key '{key}' from the adapter checkpoint")
    for key in base_unexpected or []:
        errors.append(f"- unexpected key '{key}' loading base model checkpoint")
    for key in lora_unexpected or []:
        errors.append(f"- unexpected key '{key}' loading adapter checkpoint")
    if errors:
        raise LoRAKeyMismatchError(
            "Checkpoint keys do not match the LoRA model (check the checkpoint files and the "
            "model's lora_attn_modules / apply_lora_to_mlp / apply_lora_to_output):\n"
            + "\n".join(errors)
        )


def load_dora_magnitudes(model: nn.Module) -> None:
    """Call ``initialize_dora_magnitude()`` on every DoRA module (after loading base weights)."""
    for _, module in model.named_modules():
        init = getattr(module, "initialize_dora_magnitude", None)
        if callable(init):
            init()
