"""Expert weights between Hugging Face's per-expert keys and native grouped tensors.

HF (on disk, as transformers' ``save_pretrained`` writes them):
``model.layers.{i}.{block}.experts.{e}.{gate,up,down}.weight`` (``nn.Linear`` layout,
``[f, d]`` / ``[d, f]``) and the router ``model.layers.{i}.{block}.gate.weight [E, d]``.
Native: ``layers.{i}.mlp.experts.{gate,up,down}_proj`` ``[E, d, f]`` / ``[E, f, d]`` (each
expert's matrix transposed, stacked) and ``layers.{i}.mlp.router.gate.weight``. Both
directions only stack / transpose, so HF -> native -> HF is bit-exact.

gpt-oss stores its experts grouped already: ``mlp.experts.gate_up_proj [E, d, 2f]`` (gate and
up interleaved along the last dim) with ``gate_up_proj_bias [E, 2f]``, ``down_proj [E, f, d]``
with ``down_proj_bias [E, d]``, the router as ``mlp.router.{weight,bias}`` and the attention
sinks as ``self_attn.sinks``; the interleaved columns are split / re-interleaved (bit-exact).
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
    "GPT_OSS": ("mlp", ("gate_up_proj", "gate_up_proj", "down_proj")),  # fused: see _oss_*
    "LLAMA4": ("feed_forward", ("gate_up_proj", "gate_up_proj", "down_proj")),  # _llama4_*
}
_NATIVE = ("gate_proj", "up_proj", "down_proj")


_OSS_HF = re.compile(
    r"^model\.layers\.(\d+)\.(mlp\.experts\.(?:gate_up_proj|down_proj)(?:_bias)?"
    r"|mlp\.router\.(?:weight|bias)|self_attn\.sinks)$"
)
_OSS_NATIVE = re.compile(
    r"^layers\.(\d+)\.(mlp\.experts\.(?:gate|up|down)_(?:proj|bias)"
    r"|mlp\.router\.gate\.(?:weight|bias)|attn\.sinks)$"
)


def _oss_to_native(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    native: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _OSS_HF.match(key)
        if m is None:
            rest[key] = value
            continue
        pre, name = f"layers.{m.group(1)}.", m.group(2)
        if name == "self_attn.sinks":
            native[pre + "attn.sinks"] = value
        elif name.startswith("mlp.router."):
            native[pre + "mlp.router.gate." + name.rsplit(".", 1)[1]] = value
        elif name.endswith("gate_up_proj") or name.endswith("gate_up_proj_bias"):
            kind = "proj" if name.endswith("proj") else "bias"
            native[f"{pre}mlp.experts.gate_{kind}"] = value[..., ::2].contiguous()
            native[f"{pre}mlp.experts.up_{kind}"] = value[..., 1::2].contiguous()
        else:
            native[f"{pre}mlp.experts.down_{'proj' if name.endswith('proj') else 'bias'}"] = value
    return native, rest


def _oss_to_hf(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    hf: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _OSS_NATIVE.match(key)
        if m is None:
            rest[key] = value
            continue
        pre, name = f"model.layers.{m.group(1)}.", m.group(2)
        if name == "attn.sinks":
            hf[pre + "self_attn.sinks"] = value
        elif name.startswith("mlp.router."):
            hf[pre + "mlp.router." + name.rsplit(".", 1)[1]] = value
        elif name.startswith("mlp.experts.down_"):
            hf[pre + "mlp.experts.down_proj" + ("" if name.endswith("proj") else "_bias")] = value
        elif name.startswith("mlp.experts.gate_"):
            kind = name.rsplit("_", 1)[1]
            up = sd[key.replace("gate_", "up_")]
            fused = torch.stack([value, up], dim=-1).reshape(*value.shape[:-1], -1)
            hf[pre + "mlp.experts.gate_up_proj" + ("" if kind == "proj" else "_bias")] = fused
    return hf, rest


_L4_HF = re.compile(
    r"^model\.layers\.(\d+)\.feed_forward\.(experts\.gate_up_proj|experts\.down_proj"
    r"|router\.weight)$"
)
_L4_NATIVE = re.compile(
    r"^layers\.(\d+)\.mlp\.(experts\.(?:gate|up|down)_proj|router\.gate\.weight)$"
)


def _llama4_to_native(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Llama 4: ``feed_forward.experts.gate_up_proj [E, d, 2f]`` is gate then up (halves)."""
    native: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _L4_HF.match(key)
        if m is None:
            rest[key] = value
            continue
        pre, name = f"layers.{m.group(1)}.mlp.", m.group(2)
        if name == "router.weight":
            native[pre + "router.gate.weight"] = value
        elif name == "experts.down_proj":
            native[pre + "experts.down_proj"] = value
        else:
            gate, up = value.chunk(2, dim=-1)
            native[pre + "experts.gate_proj"] = gate.contiguous()
            native[pre + "experts.up_proj"] = up.contiguous()
    return native, rest


def _llama4_to_hf(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    hf: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _L4_NATIVE.match(key)
        if m is None:
            rest[key] = value
            continue
        pre, name = f"model.layers.{m.group(1)}.feed_forward.", m.group(2)
        if name == "router.gate.weight":
            hf[pre + "router.weight"] = value
        elif name == "experts.down_proj":
            hf[pre + "experts.down_proj"] = value
        elif name == "experts.gate_proj":
            up = sd[key.replace("gate_proj", "up_proj")]
            hf[pre + "experts.gate_up_proj"] = torch.cat([value, up], dim=-1)
    return hf, rest


def hf_experts_to_native(
    state_dict: Mapping[str, Tensor], family: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split ``state_dict`` into (native expert + router tensors, every other HF key)."""
    if family == "GPT_OSS":
        return _oss_to_native(state_dict)
    if family == "LLAMA4":
        return _llama4_to_native(state_dict)
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
    if family == "GPT_OSS":
        return _oss_to_hf(state_dict)
    if family == "LLAMA4":
        return _llama4_to_hf(state_dict)
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
