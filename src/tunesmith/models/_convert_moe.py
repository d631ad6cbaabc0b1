"""Expert weights between Hugging Face's per-expert keys and native grouped tensors.

HF (on disk, as transformers' ``save_pretrained`` writes them):
``model.layers.{i}.{block}.experts.{e}.{gate,up,down}.weight`` (``nn.Linear`` layout,
``[f, d]`` / ``[d, f]``) and the router ``model.layers.{i}.{block}.gate.weight [E, d]``.
Native: ``layers.{i}.mlp.experts.{gate,up,down}_proj`` ``[E, d, f]`` / ``[E, f, d]`` (each
expert's matrix transposed, stacked) and ``layers.{i}.mlp.router.gate.weight``. Both
directions only stack / transpose, so HF -> native -> HF is bit-exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["MOE_FAMILIES", "hf_experts_to_native", "native_experts_to_hf"]

#: family -> (HF block name, HF names of the native gate_proj, up_proj, down_proj)
MOE_FAMILIES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "QWEN3_MOE": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "MIXTRAL": ("block_sparse_moe", ("w1", "w3", "w2")),
}
_NATIVE = ("gate_proj", "up_proj", "down_proj")


def hf_experts_to_native(
    state_dict: Mapping[str, Tensor], family: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split ``state_dict`` into (native expert + router tensors, every other HF key)."""
    block, names = MOE_FAMILIES[family]
    expert_re = re.compile(
        rf"^model\.layers\.(\d+)\.{block}\.experts\.(\d+)\.({'|'.join(names)})\.weight$"
    )
    router_re = re.compile(rf"^model\.layers\.(\d+)\.{block}\.gate\.weight$")
    found: dict[tuple[str, str], dict[int, Tensor]] = {}
    native: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if m := expert_re.match(key):
            name = _NATIVE[names.index(m.group(3))]
            found.setdefault((m.group(1), name), {})[int(m.group(2))] = value
        elif m := router_re.match(key):
            native[f"layers.{m.group(1)}.mlp.router.gate.weight"] = value
        else:
            rest[key] = value
    for (layer, name), experts in found.items():
        if sorted(experts) != list(range(len(experts))):
            raise KeyError(f"layer {layer}: experts {sorted(experts)} of {name} are not 0..E-1")
        mats = [experts[e].t() for e in range(len(experts))]
        native[f"layers.{layer}.mlp.experts.{name}"] = torch.stack(mats)
    return native, rest


def native_experts_to_hf(
    state_dict: Mapping[str, Tensor], family: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split native ``state_dict`` into (HF expert + router tensors, every other key)."""
    block, names = MOE_FAMILIES[family]
    expert_re = re.compile(rf"^layers\.(\d+)\.mlp\.experts\.({'|'.join(_NATIVE)})$")
    router_re = re.compile(r"^layers\.(\d+)\.mlp\.router\.gate\.weight$")
    hf: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if m := expert_re.match(key):
            hf_name = names[_NATIVE.index(m.group(2))]
            for e, mat in enumerate(value.unbind(0)):
                hf[f"model.layers.{m.group(1)}.{block}.experts.{e}.{hf_name}.weight"] = (
                    mat.t().contiguous()
                )
        elif m := router_re.match(key):
            hf[f"model.layers.{m.group(1)}.{block}.gate.weight"] = value
        else:
            rest[key] = value
    return hf, rest
