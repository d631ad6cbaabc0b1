"""Build a model on the meta device and fill it from a full (unsharded) state dict.

The recipes' order, one process or many::

    with torch.device("meta"):
        model = build(...)                         # no memory, no random init
    shard_model(model)                             # FSDP2, if distributed: still on meta
    weights |= initial_adapter_weights(model, weights, seed)   # fresh LoRA / DoRA tensors
    load_full_state_dict(model, weights, device)   # each rank materialises only its shards

Nothing is ever materialised un-sharded on the accelerator except, briefly, one NF4 weight
while it is quantized (NF4's double quantization uses the whole tensor's statistics, so a
shard must be cut from the quantized full tensor, not quantized on its own).

Fresh adapters are drawn on CPU from one ``torch.Generator`` seeded with the run's seed, in
module order, as full tensors: every rank and a single process get bit-identical adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from tunesmith.modules.peft._nf4 import is_nf4, nf4_regroup, nf4_shard, quantize_nf4
from tunesmith.training.checkpointing._files import release_mapped_pages

__all__ = [
    "copy_released",
    "initial_adapter_weights",
    "load_full_state_dict",
    "local_chunk",
    "meta_tensors",
]


def initial_adapter_weights(
    model: nn.Module, weights: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Full CPU tensors for every adapter parameter of ``model`` that ``weights`` lacks.

    Each adapter module with an ``initial_adapter_state(generator, loaded)`` method (LoRA,
    DoRA, QLoRA) gets its own entries (``loaded`` = what ``weights`` has for it: ``weight``,
    maybe ``lora_a.weight`` ...); DoRA magnitudes are computed from the loaded base weight.
    ``model`` may be on the meta device (only shapes and dtypes are read).
    """
    generator = torch.Generator().manual_seed(seed)
    fresh: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        init = getattr(module, "initial_adapter_state", None)
        if not callable(init):
            continue
        prefix = f"{name}." if name else ""
        own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        for key, value in init(generator, own).items():
            fresh[prefix + key] = value
    return fresh


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` still on the meta device."""
    names = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        local = getattr(tensor, "_local_tensor", tensor)
        if tensor.is_meta or local.is_meta:
            names.append(name)
    return names


@torch.no_grad()
def load_full_state_dict(
    model: nn.Module,
    full_sd: dict[str, torch.Tensor],
    device: torch.device | str,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Assign every entry of ``full_sd`` (full tensors, usually on CPU) to the parameter or
    buffer of the same name in ``model`` (on meta, FSDP2-sharded or not), on ``device``, in the
    dtype the model was built with.

    A sharded parameter gets only this rank's shard (cut on CPU, then moved); an NF4
    parameter is quantized from the full tensor with the model's block sizes (then cut). With
    ``strict`` anything left on meta afterwards is an error naming it. Returns
    ``(missing, unexpected)`` keys.
    """
    device = torch.device(device)
    targets: dict[str, tuple[nn.Module, str, torch.Tensor, bool]] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for pname, param in module._parameters.items():
            if param is not None and prefix + pname not in targets:
                targets[prefix + pname] = (module, pname, param, True)
        for bname, buf in module._buffers.items():
            if buf is not None and bname not in module._non_persistent_buffers_set:
                targets.setdefault(prefix + bname, (module, bname, buf, False))
    unexpected = [k for k in full_sd if k not in targets]
    missing = [k for k in targets if k not in full_sd]
    for key, (module, name, like, is_param) in targets.items():
        if key not in full_sd:
            continue
        value = _materialise(full_sd[key], like, device)
        release_mapped_pages(full_sd[key])  # a memory-mapped file's pages: copied, dropped
        if is_param:
            module._parameters[name] = nn.Parameter(value, requires_grad=like.requires_grad)
        else:
            module._buffers[name] = value
    for module in model.modules():  # torchtune convention: recompute derived buffers
        rope_init = getattr(module, "rope_init", None)
        if callable(rope_init):
            rope_init()
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"load_full_state_dict: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    if strict and (left := meta_tensors(model)):
        raise RuntimeError(f"load_full_state_dict: still on the meta device: {left[:6]}")
    return missing, unexpected


def _materialise(full: torch.Tensor, like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``full`` as ``like`` is laid out (dtype, NF4, DTensor shard) on ``device`` (a copy)."""
    from torch.distributed.tensor import DTensor

    local_like = like._local_tensor if isinstance(like, DTensor) else like
    if tuple(full.shape) != tuple(like.shape):
        raise RuntimeError(
            f"load_full_state_dict: shape {tuple(full.shape)} in the checkpoint, "
            f"{tuple(like.shape)} in the model"
        )
    if is_nf4(local_like):
        value = quantize_nf4(full.to(device=device, dtype=local_like.dtype), local_like.block_size)
    else:
        value = None
    if not isinstance(like, DTensor):
        return value if value is not None else copy_released(full, like.dtype, device)
    mesh, placements = like.device_mesh, like.placements
    if value is not None:  # NF4: cut from the whole tensor's quantization (even pieces of
        local = local_chunk(value, mesh, placements, cut=nf4_shard)  # whole blocks, checked)
        local = nf4_regroup(local, local_like.scaler_block_size)  # as the sharding laid it out
        return DTensor(local, like._spec, requires_grad=like.requires_grad)
    local = copy_released(local_chunk(full, mesh, placements), like.dtype, device)
    return DTensor.from_local(
        local, mesh, placements, run_check=False, shape=like.shape, stride=like.stride()
    )


_BLOCK_BYTES = 1 << 20
Cut = Callable[[torch.Tensor, int, int, int], torch.Tensor]


def copy_released(src: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A copy of ``src`` (any shape) in ``dtype`` on ``device``, made ~1 MiB of rows at a time,
    each block's memory-mapped source pages dropped once copied (``release_mapped_pages``):
    the source never adds more than one block to the resident memory, instead of the whole
    shard (for a memory-mapped checkpoint; a plain tensor is simply copied)."""
    out = torch.empty(src.shape, dtype=dtype, device=device)
    if src.dim() == 0 or src.shape[0] == 0 or src.nbytes <= _BLOCK_BYTES:
        out.copy_(src)
        return out
    rows = max(1, _BLOCK_BYTES // max(1, src[0].nbytes))
    for start in range(0, src.shape[0], rows):
        part = src[start : start + rows]
        out[start : start + rows].copy_(part)
        release_mapped_pages(part)
    return out


def _chunk(tensor: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    """Piece ``index`` of ``torch.chunk(tensor, parts, dim)`` (empty past the last chunk)."""
    chunks = list(torch.chunk(tensor, parts, dim=dim))
    if index < len(chunks):
        return chunks[index]
    shape = list(tensor.shape)
    shape[dim] = 0
    return tensor.new_empty(shape)


def local_chunk(
    full: torch.Tensor, mesh: Any, placements: Sequence[Any], cut: Cut = _chunk
) -> torch.Tensor:
    """This rank's piece of ``full`` under DTensor ``placements`` on ``mesh`` (any number of
    mesh dims; ``cut(tensor, dim, parts, index)`` splits, by default as DTensor and FSDP2 cut
    them with ``torch.chunk``, so uneven splits leave the last ranks shorter or empty; NF4
    weights are cut with ``nf4_shard``). FSDP2's ``_StridedShard`` (FSDP over a dimension
    tensor parallelism already split) is cut last: FSDP shards the TP-local piece."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    coords = mesh.get_coordinate()
    order = [i for i, p in enumerate(placements) if not isinstance(p, _StridedShard)]
    order += [i for i, p in enumerate(placements) if isinstance(p, _StridedShard)]
    local = full
    for i in order:
        placement = placements[i]
        if not isinstance(placement, Shard | _StridedShard):  # Replicate (Partial: never)
            continue
        dim = placement.dim % local.dim()
        local = cut(local, dim, mesh.size(i), coords[i])
    return local
