"""LoRA / DoRA adapters on the parts of a fused Hugging Face projection.

Phi-3 / Phi-4-mini checkpoints fuse ``q/k/v`` into ``self_attn.qkv_proj`` and gate / up into
``mlp.gate_up_proj``; tunesmith's model keeps the parts apart, each with its own adapter
(``A_p [r, in]``, ``B_p [out_p, r]``, scaling ``alpha / r``). PEFT can only adapt the fused
module as a whole, so the parts are written as one adapter of rank ``k r`` (``k`` adapted
parts), exactly:

- ``lora_A = cat(A_p) [k r, in]`` (adapted parts in the fused order),
- ``lora_B [sum(out_p), k r]`` block-diagonal: part ``p``'s rows hold ``B_p`` in its own ``r``
  columns, zero elsewhere; the rows of a part without an adapter (``k_proj`` when only
  ``q_proj`` / ``v_proj`` are targets) are zero,
- ``rank_pattern {module: k r}`` and ``alpha_pattern {module: k alpha}``, so PEFT's scaling
  ``k alpha / (k r)`` is the parts' ``alpha / r``: ``B A x`` is the stacked per-part deltas.

DoRA's magnitude is per output row of the fused weight, i.e. the parts' magnitudes stacked;
a part without an adapter would need the norm of its base rows, which an adapter file does
not hold, so DoRA must adapt every part (refused at build time by
:func:`refuse_partial_fused_dora`).

When every part is adapted with one shared ``A`` (an adapter PEFT trained on the fused module,
just loaded) the plain rank-``r`` form is written instead: ``lora_A = A``, ``lora_B =
cat(B_p)``. Which modules use the block form, and which parts they hold, is recorded in the
safetensors metadata under :data:`FUSED_METADATA_KEY` (``{"model.layers.0.self_attn.qkv_proj":
["q_proj", "v_proj"], ...}``, native part names), which :func:`split_fused_lora` reads back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "FUSED_FAMILIES",
    "FUSED_METADATA_KEY",
    "check_patterns",
    "FUSED_PARTS",
    "block_modules",
    "fuse_lora",
    "fused_patterns",
    "is_lora_suffix",
    "read_block_modules",
    "refuse_partial_fused_dora",
    "split_fused_lora",
]

FUSED_METADATA_KEY = "tunesmith.fused_lora"

FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "mlp.gate_up_proj": ("w1", "w3"),
}
"""Hugging Face fused module -> its native parts, in the fused row order."""

_LORA_SUFFIXES = ("lora_a.weight", "lora_b.weight", "magnitude")


def _shared(parts: Mapping[str, Mapping[str, Tensor]], names: Sequence[str]) -> bool:
    """Every part adapted, all with the same ``A``: the plain rank-r fused form is exact."""
    a = parts.get("lora_a.weight", {})
    if any(n not in a for n in names):
        return False
    first = a[names[0]]
    return all(torch.equal(first, a[n]) for n in names[1:])


def fuse_lora(
    fused: str,
    parts: Mapping[str, Mapping[str, Tensor]],
    sizes: Sequence[int] | None,
    where: str,
) -> dict[str, Tensor]:
    """One fused module's adapter tensors from its parts' adapters.

    Args:
        fused: ``"self_attn.qkv_proj"`` or ``"mlp.gate_up_proj"``.
        parts: ``{suffix: {part: tensor}}`` for the LoRA suffixes (``lora_a.weight [r, in]``,
            ``lora_b.weight [out_p, r]``, ``magnitude [out_p]``).
        sizes: the output rows of every part (needed when a part has no adapter).
        where: the layer, for error messages.

    Returns:
        ``{suffix: tensor}``: ``lora_a.weight [k r, in]``, ``lora_b.weight [sum(out_p), k r]``
        (``[.., r]`` in the shared form), ``magnitude [sum(out_p)]`` for DoRA.
    """
    names = FUSED_PARTS[fused]
    a, b = parts.get("lora_a.weight", {}), parts.get("lora_b.weight", {})
    adapted = [n for n in names if n in a]
    if set(a) != set(b) or not adapted:
        raise ValueError(f"{where}: {fused} adapters need both lora_a and lora_b for {adapted}")
    magnitude = parts.get("magnitude", {})
    if magnitude and len(adapted) != len(names):
        raise ValueError(
            f"{where}: DoRA on {adapted} of the fused {fused} {list(names)} cannot be saved as "
            "one PEFT adapter (its magnitude spans every row); adapt all of them or use LoRA"
        )
    out: dict[str, Tensor] = {}
    if magnitude:
        out["magnitude"] = torch.cat([magnitude[n] for n in names], dim=0)
    if _shared(parts, names):
        out["lora_a.weight"] = a[names[0]]
        out["lora_b.weight"] = torch.cat([b[n] for n in names], dim=0)
        return out
    rank = a[adapted[0]].shape[0]
    if any(a[n].shape[0] != rank for n in adapted):
        raise ValueError(f"{where}: the {fused} parts' adapters have different ranks")
    rows = [b[n].shape[0] if n in b else None for n in names]
    if any(r is None for r in rows):
        if sizes is None:
            raise ValueError(f"{where}: hf_config is needed to write a partial {fused} adapter")
        rows = list(sizes)
    ref = b[adapted[0]]
    block = torch.zeros(sum(rows), rank * len(adapted), dtype=ref.dtype, device=ref.device)
    row, col = 0, 0
    for name, n_rows in zip(names, rows, strict=True):
        if name in b:
            block[row : row + n_rows, col : col + rank] = b[name]
            col += rank
        row += n_rows
    out["lora_a.weight"] = torch.cat([a[n] for n in adapted], dim=0)
    out["lora_b.weight"] = block
    return out


_HF_NAMES = {  # family -> {fused native group -> its Hugging Face module name}
    "PHI3_MINI": {
        "self_attn.qkv_proj": "self_attn.qkv_proj",
        "mlp.gate_up_proj": "mlp.gate_up_proj",
    },
    "PHI4": {"self_attn.qkv_proj": "self_attn.qkv_proj", "mlp.gate_up_proj": "mlp.gate_up_proj"},
    "GRANITE4": {"mlp.gate_up_proj": "shared_mlp.input_linear"},
}
FUSED_FAMILIES = tuple(_HF_NAMES)
"""Families whose checkpoints fuse projections tunesmith keeps apart (adapters: block form)."""


def block_modules(
    adapter_state_dict: Mapping[str, Tensor], family: str = "PHI3_MINI"
) -> dict[str, list[str]]:
    """The fused modules :func:`fuse_lora` writes in the block form, with their adapted parts.

    ``adapter_state_dict`` holds native adapter keys (``layers.0.attn.q_proj.lora_a.weight``).
    Returns ``{"model.layers.0.self_attn.qkv_proj": ["q_proj", "v_proj"], ...}`` (Granite 4:
    ``model.layers.0.shared_mlp.input_linear``).
    """
    hf_names = _HF_NAMES.get(family, {})
    groups: dict[tuple[str, str], dict[str, dict[str, Tensor]]] = {}
    for fused, names in FUSED_PARTS.items():
        if fused not in hf_names:
            continue
        parent = "attn" if fused.startswith("self_attn") else "mlp"
        for key, value in adapter_state_dict.items():
            bits = key.split(".")
            if len(bits) < 5 or bits[0] != "layers" or bits[2] != parent or bits[3] not in names:
                continue
            suffix = ".".join(bits[4:])
            groups.setdefault((bits[1], fused), {}).setdefault(suffix, {})[bits[3]] = value
    out: dict[str, list[str]] = {}
    for (layer, fused), parts in groups.items():
        names = FUSED_PARTS[fused]
        if "lora_a.weight" in parts and not _shared(parts, names):
            adapted = [n for n in names if n in parts["lora_a.weight"]]
            out[f"model.layers.{layer}.{hf_names[fused]}"] = adapted
    return out


def fused_patterns(
    modules: Mapping[str, Sequence[str]], rank: int, alpha: float
) -> tuple[dict[str, int], dict[str, float]]:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` for the block-form modules: ``k r`` and
    ``k alpha``. Keys are the leaf names (``qkv_proj``) when every layer adapts the same number
    of parts, else the full module names (PEFT matches ``(.*\\.)?key$``)."""
    by_leaf: dict[str, set[int]] = {}
    for module, parts in modules.items():
        by_leaf.setdefault(module.rsplit(".", 1)[1], set()).add(len(parts))
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for module, parts in sorted(modules.items()):
        leaf = module.rsplit(".", 1)[1]
        key = leaf if len(by_leaf[leaf]) == 1 else module
        ranks[key] = rank * len(parts)
        value = alpha * len(parts)
        alphas[key] = int(value) if float(value).is_integer() else value
    return ranks, alphas


def read_block_modules(metadata: Mapping[str, str] | None) -> dict[str, list[str]]:
    """The block-form modules recorded in an adapter file's safetensors metadata."""
    raw = (metadata or {}).get(FUSED_METADATA_KEY)
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"malformed {FUSED_METADATA_KEY} metadata in the adapter file: {raw!r}")
    return {str(k): [str(p) for p in v] for k, v in data.items()}


def check_patterns(
    config: Mapping[str, object], modules: Mapping[str, Sequence[str]], where: str
) -> None:
    """An adapter_config's rank / alpha patterns must be exactly the block-form ones."""
    rank, alpha = int(config["r"]), float(config["lora_alpha"])  # type: ignore[arg-type]
    want = fused_patterns(modules, rank, alpha)
    got = (config.get("rank_pattern") or {}, config.get("alpha_pattern") or {})
    if {k: int(v) for k, v in got[0].items()} != want[0] or {  # type: ignore[union-attr]
        k: float(v)
        for k, v in got[1].items()  # type: ignore[union-attr]
    } != {k: float(v) for k, v in want[1].items()}:
        raise ValueError(
            f"{where}: rank_pattern / alpha_pattern {got} change LoRA's scaling in ways a "
            "native adapter (one rank, scaling alpha / rank) cannot represent; merge the "
            "adapter in PEFT (merge_and_unload) and load the merged model instead"
        )


def split_fused_lora(
    suffix: str, value: Tensor, names: Sequence[str], sizes: Sequence[int], adapted: Sequence[str]
) -> dict[str, Tensor]:
    """Inverse of :func:`fuse_lora` for one tensor of a block-form module.

    ``value`` is ``lora_a.weight [k r, in]``, ``lora_b.weight [sum(sizes), k r]`` or
    ``magnitude [sum(sizes)]``; returns ``{part: tensor}`` for the adapted parts.

    Raises:
        ValueError: ``lora_b`` is not block-diagonal over ``adapted``.
    """
    k = len(adapted)
    if suffix == "lora_a.weight":
        if value.shape[0] % k:
            raise ValueError(f"fused lora_A of {value.shape[0]} rows is not {k} equal blocks")
        return dict(zip(adapted, value.chunk(k, dim=0), strict=True))
    if suffix == "magnitude":
        return dict(zip(names, value.split(list(sizes), dim=0), strict=True))
    if value.shape[1] % k:
        raise ValueError(f"fused lora_B of {value.shape[1]} columns is not {k} equal blocks")
    rank = value.shape[1] // k
    out: dict[str, Tensor] = {}
    col = 0
    for name, rows in zip(names, value.split(list(sizes), dim=0), strict=True):
        if name in adapted:
            own = rows[:, col : col + rank]
            rest = torch.cat([rows[:, :col], rows[:, col + rank :]], dim=1)
            col += rank
            out[name] = own.contiguous()
        else:
            rest = rows
        if rest.numel() and bool(rest.ne(0).any()):
            raise ValueError(
                f"fused lora_B is not block-diagonal over {list(adapted)} (part {name}): "
                "it cannot be split into per-part adapters"
            )
    return out


def refuse_partial_fused_dora(family: str, attn_modules: Sequence[str], use_dora: bool) -> None:
    """DoRA on some but not all of q/k/v of a fused-checkpoint family (Phi-3 / Phi-4-mini):
    its adapter cannot be written in PEFT's format, so it is refused before any work."""
    if not use_dora or family not in ("PHI3_MINI", "PHI4"):
        return
    qkv = [m for m in ("q_proj", "k_proj", "v_proj") if m in attn_modules]
    if qkv and len(qkv) != 3:
        raise ValueError(
            f"model.use_dora=True with lora_attn_modules={list(attn_modules)}: this model's "
            "checkpoints fuse q/k/v into qkv_proj, whose DoRA magnitude spans all three; "
            "list all of q_proj, k_proj, v_proj or none of them (or set use_dora=False)."
        )  # apply_lora_to_mlp adapts gate and up together: always whole


def is_lora_suffix(suffix: str) -> bool:
    return suffix in _LORA_SUFFIXES
