"""Per-expert LoRA adapters <-> PEFT's ``target_parameters`` LoRA on fused expert weights.

transformers 5 holds Qwen3-MoE's and Mixtral's experts as ``mlp.experts.gate_up_proj
[E, 2f, d]`` (gate rows, then up rows) and ``mlp.experts.down_proj [E, d, f]``. PEFT (0.17+)
adapts them with ``LoraConfig(target_parameters=["gate_up_proj", "down_proj"])``: one
``lora.ParamWrapper`` per parameter, nested on the experts module (``gate_up_proj``'s inside,
``down_proj``'s outside), saved as

- ``base_model.model.model.layers.{i}.mlp.experts.base_layer.lora_A.weight [E*r, d]`` and
  ``...experts.base_layer.lora_B.weight [2f, r*E]`` (``gate_up_proj``),
- ``...experts.lora_A.weight [E*r, f]`` and ``...experts.lora_B.weight [d, r*E]``
  (``down_proj``);

expert ``e``'s update is ``B_e A_e`` with ``A_e = A[e*r:(e+1)*r]`` and ``B_e = B[:, e::E]``
(PEFT's ``get_delta_weight`` reshapes ``A`` to ``[E, r, in]`` and ``B`` to ``[out, r, E]``).
Native ``LoRAGroupedExperts`` keeps ``[E, r, in]`` / ``[E, out, r]``, so both directions only
reshape / permute (bit-exact).

Llama 4 holds ``feed_forward.experts.gate_up_proj [E, d, 2f]`` (gate, then up halves) and
``down_proj [E, f, d]``: ``x @ W`` layout, with no ``is_transposed`` flag, so PEFT swaps its
in / out features and adapts ``W_e`` by ``B'_e A'_e`` (``A' [E*r, 2f]``, ``B' [d, r*E]`` for
``gate_up_proj``; ``A' [E*r, d]``, ``B' [f, r*E]`` for ``down_proj``). The native update
``A_e^T B_e^T`` of the same matrix is that with ``A'_e = B_e^T`` and ``B'_e = A_e^T``: the
factors swap roles, still only a reshape / permute. Native keys may carry ``decoder.`` (the
model with its vision encoder), PEFT's then ``language_model.``.

gpt-oss (interleaved ``gate_up_proj [E, d, 2f]`` with biases) has no PEFT mapping here: its
expert adapters are refused by the PEFT writer (merge them, or save a native checkpoint). So is LoRA on a dense
MLP layer (Qwen3-MoE's ``mlp_only_layers``) next to expert LoRA: PEFT 0.21 rewrites
``gate_proj`` / ``up_proj`` / ``down_proj`` targets of these models to the fused experts
(its transformers-4 adapter conversion), so it could not load those layers' adapters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = [
    "EXPERT_TARGET_PARAMETERS",
    "is_peft_expert_key",
    "native_expert_adapters_to_peft",
    "peft_expert_adapters_to_native",
]

#: PEFT ``target_parameters`` an expert adapter needs (as PEFT writes them: sorted)
EXPERT_TARGET_PARAMETERS = ["down_proj", "gate_up_proj"]
_FAMILIES = ("QWEN3_MOE", "MIXTRAL", "LLAMA4")
_NATIVE = re.compile(
    r"^(decoder\.)?layers\.(\d+)\.mlp\.experts\.(gate_up|down)\.lora_(a|b)\.weight$"
)
_DENSE_MLP = re.compile(r"^layers\.\d+\.mlp\.w[123]\.lora_[ab]\.weight$")
_PEFT = re.compile(
    r"^(?:base_model\.model\.)?(language_model\.)?model\.layers\.(\d+)\."
    r"(mlp|feed_forward)\.experts\.(base_layer\.)?lora_(A|B)(?:\.default)?\.weight$"
)


def _family(model_type: Any) -> str:
    return str(getattr(model_type, "name", model_type)).upper()


def native_expert_adapters_to_peft(
    adapter: Mapping[str, Tensor], model_type: Any, prefix: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split native adapter weights into (PEFT expert entries with ``prefix``, the rest)."""
    peft: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    dense = [k for k in adapter if _DENSE_MLP.match(k)]
    if dense and any(_NATIVE.match(k) for k in adapter):
        raise ValueError(
            f"{dense[0]}: PEFT (0.21, transformers 5) reads gate_proj / up_proj / down_proj "
            "targets of an MoE model as its experts, so LoRA on a dense MLP layer next to expert "
            "LoRA cannot be saved in PEFT's format; save the merged model or a native checkpoint"
        )
    family = _family(model_type)
    for key, value in adapter.items():
        m = _NATIVE.match(key)
        if m is None:
            rest[key] = value
            continue
        if family not in _FAMILIES:
            raise ValueError(
                f"{key}: PEFT has no mapping here for {family}'s fused experts "
                f"(supported: {', '.join(_FAMILIES)}); save the merged model "
                "(save_adapter_weights_only: False) or a native checkpoint instead"
            )
        vlm, layer, proj, ab = m.groups()
        inner = "base_layer." if proj == "gate_up" else ""
        block = "feed_forward" if family == "LLAMA4" else "mlp"
        lm = "language_model." if vlm else ""
        if family == "LLAMA4":  # the factors swap roles (see the module docstring)
            ab = "b" if ab == "a" else "a"
            value = value.transpose(1, 2)  # A_e [r, in] -> B'_e [in, r]; B_e [out, r] -> A'_e
        name = f"{prefix}{lm}model.layers.{layer}.{block}.experts.{inner}lora_{ab.upper()}.weight"
        if ab == "a":  # [E, r, in] -> [E*r, in]
            peft[name] = value.reshape(-1, value.shape[-1]).contiguous()
        else:  # [E, out, r] -> [out, r*E] (column j*E + e)
            peft[name] = value.permute(1, 2, 0).reshape(value.shape[1], -1).contiguous()
    return peft, rest


def is_peft_expert_key(key: str) -> bool:
    """Whether a PEFT adapter key is a fused-experts (``target_parameters``) entry."""
    return _PEFT.match(key) is not None


def _num_experts(hf_config: Any) -> int:
    cfg: Mapping[str, Any] = {}
    if isinstance(hf_config, Mapping):
        cfg = hf_config
    elif hf_config is not None:
        cfg = hf_config.to_dict()
    cfg = cfg.get("text_config") or cfg  # Llama 4 with its vision encoder
    n = cfg.get("num_experts") or cfg.get("num_local_experts")
    if not n:
        raise ValueError(
            "the PEFT adapter adapts fused experts (target_parameters); reading it needs the "
            "base model's config.json (num_experts / num_local_experts)"
        )
    return int(n)


def peft_expert_adapters_to_native(
    peft: Mapping[str, Tensor], hf_config: Any
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split PEFT adapter entries into (native expert adapters, every other entry)."""
    native: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    n_exp = None
    for key, value in peft.items():
        m = _PEFT.match(key)
        if m is None:
            rest[key] = value
            continue
        n_exp = n_exp or _num_experts(hf_config)
        lm, layer, block, inner, ab = m.groups()
        proj = "gate_up" if inner else "down"
        if ab == "A":  # [E*r, in] -> [E, r, in]
            value = value.reshape(n_exp, -1, value.shape[-1]).contiguous()
        else:  # [out, r*E] -> [E, out, r]
            value = value.reshape(value.shape[0], -1, n_exp).permute(2, 0, 1).contiguous()
        if block == "feed_forward":  # Llama 4: the factors swap roles
            ab = "B" if ab == "A" else "A"
            value = value.transpose(1, 2).contiguous()
        pre = "decoder." if lm else ""
        native[f"{pre}layers.{layer}.mlp.experts.{proj}.lora_{ab.lower()}.weight"] = value
    return native, rest
