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
Llama 4 stores ``feed_forward.experts.gate_up_proj [E, d, 2f]`` as gate then up halves and its
router as ``feed_forward.router.weight``.

One conversion serves every family: ``MOE_FAMILIES`` says where each family keeps its block,
router and experts (per-expert ``nn.Linear`` names, or a fused ``gate_up_proj`` and how its
columns are split), whether it has biases and attention sinks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MOE_FAMILIES", "MoELayout", "hf_experts_to_native", "native_experts_to_hf"]


@dataclass(frozen=True)
class MoELayout:
    """Where a family's HF checkpoint keeps one MoE layer (under ``model.layers.{i}.``).

    ``block``: the MoE module; ``router``: its router module; ``per_expert``: HF names of the
    native gate / up / down projections stored per expert (``experts.{e}.{name}.weight``), or
    None for fused grouped tensors ``experts.gate_up_proj [E, d, 2f]`` / ``down_proj [E, f, d]``
    whose gate / up columns are ``"interleaved"`` or ``"halves"`` (``fused``); ``bias``: expert
    (``*_bias``) and router biases; ``sinks``: attention sinks ``self_attn.sinks``.
    """

    block: str
    router: str
    per_expert: tuple[str, str, str] | None = None
    fused: str | None = None
    bias: bool = False
    sinks: bool = False


MOE_FAMILIES: dict[str, MoELayout] = {
    "QWEN3_MOE": MoELayout("mlp", "gate", per_expert=("gate_proj", "up_proj", "down_proj")),
    "MIXTRAL": MoELayout("block_sparse_moe", "gate", per_expert=("w1", "w3", "w2")),
    "GPT_OSS": MoELayout("mlp", "router", fused="interleaved", bias=True, sinks=True),
    "LLAMA4": MoELayout("feed_forward", "router", fused="halves"),
}
_NATIVE = ("gate", "up", "down")
_NATIVE_KEY = re.compile(
    r"^layers\.(\d+)\.(?:mlp\.experts\.(gate|up|down)_(proj|bias)"
    r"|mlp\.router\.gate\.(weight|bias)|attn\.(sinks))$"
)


def _split(fused: Tensor, how: str) -> tuple[Tensor, Tensor]:
    if how == "interleaved":
        return fused[..., ::2].contiguous(), fused[..., 1::2].contiguous()
    gate, up = fused.chunk(2, dim=-1)
    return gate.contiguous(), up.contiguous()


def _fuse(gate: Tensor, up: Tensor, how: str) -> Tensor:
    if how == "interleaved":
        return torch.stack([gate, up], dim=-1).reshape(*gate.shape[:-1], -1)
    return torch.cat([gate, up], dim=-1)


def hf_experts_to_native(
    state_dict: Mapping[str, Tensor], family: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split ``state_dict`` into (native expert + router (+ sinks) tensors, every other key)."""
    lay = MOE_FAMILIES[family]
    key_re = re.compile(
        rf"^model\.layers\.(\d+)\.(?:{re.escape(lay.block)}\.(.+)|self_attn\.(sinks))$"
    )
    names = "|".join(lay.per_expert or ())
    expert_re = re.compile(rf"^experts\.(\d+)\.({names})\.weight$") if lay.per_expert else None
    router_re = re.compile(rf"^{re.escape(lay.router)}\.(weight{'|bias' if lay.bias else ''})$")
    fused_re = re.compile(rf"^experts\.(gate_up|down)_proj({'(?:_bias)?' if lay.bias else ''})$")
    found: dict[tuple[str, str], dict[int, Tensor]] = {}
    native: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = key_re.match(key)
        name = m and m.group(2)
        pre = f"layers.{m.group(1)}." if m else ""
        if m and m.group(3) and lay.sinks:
            native[pre + "attn.sinks"] = value
        elif name and (r := router_re.match(name)):
            native[f"{pre}mlp.router.gate.{r.group(1)}"] = value
        elif name and expert_re and (e := expert_re.match(name)):
            proj = _NATIVE[lay.per_expert.index(e.group(2))]  # type: ignore[union-attr]
            found.setdefault((m.group(1), proj), {})[int(e.group(1))] = value
        elif name and lay.fused and (f := fused_re.match(name)):
            kind = "bias" if f.group(2) else "proj"
            if f.group(1) == "down":
                native[f"{pre}mlp.experts.down_{kind}"] = value
            else:
                gate, up = _split(value, lay.fused)
                native[f"{pre}mlp.experts.gate_{kind}"] = gate
                native[f"{pre}mlp.experts.up_{kind}"] = up
        else:
            rest[key] = value
    for (layer, proj), experts in found.items():
        if sorted(experts) != list(range(len(experts))):
            raise KeyError(f"layer {layer}: experts {sorted(experts)} of {proj} are not 0..E-1")
        mats = [experts[e].t() for e in range(len(experts))]
        native[f"layers.{layer}.mlp.experts.{proj}_proj"] = torch.stack(mats)
    return native, rest


def native_experts_to_hf(
    state_dict: Mapping[str, Tensor], family: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split native ``state_dict`` into (HF expert + router (+ sinks) tensors, every other key)."""
    lay = MOE_FAMILIES[family]
    hf: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = _NATIVE_KEY.match(key)
        if m is None or (m.group(5) and not lay.sinks):
            rest[key] = value
            continue
        layer, proj, kind, router, sinks = m.groups()
        pre = f"model.layers.{layer}."
        block = f"{pre}{lay.block}."
        if sinks:
            hf[pre + "self_attn.sinks"] = value
        elif router:
            hf[f"{block}{lay.router}.{router}"] = value
        elif lay.per_expert:
            hf_name = lay.per_expert[_NATIVE.index(proj)]
            for e, mat in enumerate(value.unbind(0)):
                hf[f"{block}experts.{e}.{hf_name}.weight"] = mat.t().contiguous()
        else:
            suffix = "" if kind == "proj" else "_bias"
            if proj == "down":
                hf[f"{block}experts.down_proj{suffix}"] = value
            elif proj == "gate":
                up = state_dict[key.replace(".gate_", ".up_")]
                hf[f"{block}experts.gate_up_proj{suffix}"] = _fuse(value, up, lay.fused or "")
    return hf, rest
