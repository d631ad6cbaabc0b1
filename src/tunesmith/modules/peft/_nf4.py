"""NF4 helpers for QLoRA: quantize a frozen base weight with torchao and keep checkpoints plain.

torchao is imported lazily (it is slow to import and only QLoRA needs it). torchao moved the
NF4 tensor from ``torchao.dtypes.nf4tensor`` to ``torchao.quantization`` in later releases; both
locations are tried.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_NF4_API: tuple[type, Any, Any] | None = None
# Where state_dict() puts dequantized NF4 weights (None: where the NF4 weight lives).
_STATE_DICT_DEVICE: torch.device | None = None
_STATE_DICT_KEEP = True  # False: tensor-parallel NF4 weights gathered, then not kept


def _nf4_api() -> tuple[type, Any, Any]:
    """Return ``(NF4Tensor, to_nf4, linear_nf4)`` from whichever torchao layout is installed.

    Memoised in a module global (not ``functools.cache``, which torch.compile warns about).
    """
    global _NF4_API
    if _NF4_API is not None:
        return _NF4_API
    try:
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import (
            NF4Tensor,
            linear_nf4,
            to_nf4,
        )
    except ImportError:
        try:
            from torchao.dtypes.nf4tensor import NF4Tensor, linear_nf4, to_nf4
        except ImportError as err:  # pragma: no cover - torchao is a core dependency
            raise ImportError(
                "quantize_base=True (QLoRA) needs torchao's NF4 tensor: pip install 'torchao>=0.10'"
            ) from err
    _unwrap_fsdp_output(NF4Tensor)
    _NF4_API = (NF4Tensor, to_nf4, linear_nf4)
    return _NF4_API


def _unwrap_fsdp_output(nf4_cls: type) -> None:
    """FSDP2 over a tensor-parallel NF4 weight (FSDP2 x TP QLoRA) re-gathers into its
    unsharded parameter, a TP DTensor around the NF4 tensor; torchao's
    ``fsdp_post_all_gather`` asserts ``out`` is the NF4 tensor itself. Hand it the DTensor's
    local NF4 tensor (the one FSDP2's first all-gather made), as it expects."""
    original = nf4_cls.fsdp_post_all_gather
    if getattr(original, "_unwraps_dtensor", False):
        return

    def fsdp_post_all_gather(self, outputs, metadata, param_dtype, *, out=None):  # noqa: ANN001
        if out is not None and not isinstance(out, nf4_cls):
            out = getattr(out, "_local_tensor", out)
        return original(self, outputs, metadata, param_dtype, out=out)

    fsdp_post_all_gather._unwraps_dtensor = True  # type: ignore[attr-defined]
    nf4_cls.fsdp_post_all_gather = fsdp_post_all_gather  # type: ignore[attr-defined]


def is_nf4(tensor: torch.Tensor | None) -> bool:
    """True when ``tensor`` is a torchao NF4Tensor (checked without importing torchao)."""
    return tensor is not None and type(tensor).__name__ == "NF4Tensor"


def quantize_nf4(
    weight: torch.Tensor, block_size: int = 64, scaler_block_size: int | None = None
) -> torch.Tensor:
    """Quantize a 2-D weight ``[out, in]`` to NF4 as QLoRA does.

    Blocks of ``block_size`` (64) values share a scale; scales are double-quantized in groups
    of ``scaler_block_size`` (torchao's default 256). Without ``scaler_block_size``, small
    weights whose block count is not a multiple of 256 use the largest power of two dividing
    it, so tiny test models quantize too; real model dims are unaffected.
    """
    _, to_nf4, _ = _nf4_api()
    numel = weight.numel()
    if numel % block_size != 0:
        raise ValueError(
            f"quantize_base=True needs a weight whose element count is a multiple of "
            f"{block_size} (NF4 block size); got shape {tuple(weight.shape)}. Disable "
            f"quantize_base for this layer or use dims that are multiples of {block_size}."
        )
    if scaler_block_size is None:
        scaler_block_size = math.gcd(numel // block_size, 256)
    return to_nf4(weight.detach().contiguous(), block_size, scaler_block_size)


def nf4_shard_misfit(
    shape: tuple[int, ...], dim: int, parts: int, block_size: int = 64
) -> str | None:
    """Why a ``[out, in]`` NF4 weight cannot be cut into ``parts`` equal pieces along ``dim``
    made of whole quantization blocks (``None`` when it can): rows (``dim=0``) are cut into
    contiguous runs of ``out / parts * in`` values, columns (``dim=1``) into ``in / parts``
    values of every row; either must be a multiple of ``block_size``."""
    rows, cols = shape
    if shape[dim] % parts:
        return f"its {('rows', 'columns')[dim]} ({shape[dim]}) do not split {parts} ways"
    piece = rows // parts * cols if dim == 0 else cols // parts
    if piece % block_size:
        what = f"{rows // parts} rows x {cols}" if dim == 0 else f"{cols // parts} columns per row"
        return (
            f"a 1/{parts} piece ({what} = {piece} values) is not a whole number of NF4 "
            f"blocks of {block_size}"
        )
    return None


def nf4_shard(
    weight: torch.Tensor, dim: int, parts: int, index: int, row_parts: int = 1
) -> torch.Tensor:
    """Piece ``index`` of ``parts`` of the NF4 weight ``[out, in]`` along ``dim``, as an NF4
    tensor that dequantizes to exactly the same values as that piece of the whole weight.

    The codes and each block's int8 scale are taken as they are (a piece is whole blocks, see
    :func:`nf4_shard_misfit`); the double quantization's mean stays the whole tensor's and each
    scale group of the piece (``gcd(consecutive blocks, scaler_block_size)`` blocks, so it lies
    inside one group of the whole tensor) keeps that group's factor. Quantizing the piece on its
    own would not give these values: the scale mean and group maxima are whole-tensor statistics.
    ``row_parts``: the piece's scale groups are also made small enough that FSDP2 can later
    cut the piece into that many equal row runs of whole groups. Works on the meta device.
    """
    nf4_cls, _, _ = _nf4_api()
    why = nf4_shard_misfit(tuple(weight.shape), dim, parts, weight.block_size)
    if why is not None:
        raise ValueError(f"NF4 weight {tuple(weight.shape)} cut along dim {dim}: {why}")
    rows, cols = weight.shape
    block, group = weight.block_size, weight.scaler_block_size
    n = weight.n_blocks
    device = weight.quantized_data.device
    if dim == 0:
        run = n // parts  # one contiguous run of blocks
        ids = torch.arange(index * run, (index + 1) * run, device=device)
    else:
        per_row, run = cols // block, cols // block // parts  # a run of blocks in every row
        starts = torch.arange(rows, device=device) * per_row + index * run
        ids = (starts[:, None] + torch.arange(run, device=device)[None, :]).flatten()
    local_group = math.gcd(run, group)
    if row_parts > 1 and ids.numel() % row_parts == 0:
        local_group = math.gcd(local_group, ids.numel() // row_parts)
    shape = [rows, cols]
    shape[dim] //= parts
    tensor_args = sys.modules[nf4_cls.__module__].SubclassTensorArgs  # torchao's metadata record
    return nf4_cls(
        tensor_args(torch.Size(shape), (shape[1], 1), 0, weight.dtype, weight.device, False),
        block,
        int(ids.numel()),
        local_group,
        weight.quantized_scalers[ids],
        weight.quantization_factor[ids[::local_group] // group],
        weight.scaler_mean,
        weight.quantized_data.view(n, block // 2)[ids].flatten(),
        weight.nf4,
    )


def nf4_regroup(weight: torch.Tensor, scaler_block_size: int) -> torch.Tensor:
    """``weight`` (NF4) with scale groups of ``scaler_block_size`` blocks, a divisor of its
    own (each group factor repeated): the same dequantized values, the layout another cut
    order made."""
    old = weight.scaler_block_size
    if scaler_block_size == old:
        return weight
    if old % scaler_block_size:
        raise ValueError(f"NF4: scale groups of {old} blocks cannot regroup by {scaler_block_size}")
    nf4_cls, _, _ = _nf4_api()
    tensor_args = sys.modules[nf4_cls.__module__].SubclassTensorArgs
    return nf4_cls(
        tensor_args(weight.shape, weight.stride(), 0, weight.dtype, weight.device, False),
        weight.block_size,
        weight.n_blocks,
        scaler_block_size,
        weight.quantized_scalers,
        weight.quantization_factor.repeat_interleave(old // scaler_block_size),
        weight.scaler_mean,
        weight.quantized_data,
        weight.nf4,
    )


def nf4_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x [..., in] @ weight[out, in].T`` for an NF4 weight; gradient flows to ``x`` only."""
    _, _, linear_nf4 = _nf4_api()
    return linear_nf4(input=x, weight=weight)


def dequantize(
    weight: torch.Tensor,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Plain tensor of ``weight`` (dequantized when NF4) in ``dtype`` (default: its own dtype),
    on ``device`` (default: its own device)."""
    if is_nf4(weight):
        plain = weight.get_original_weight().to(dtype or weight.dtype)
        return plain if device is None else plain.to(device)
    return weight.to(device=device, dtype=dtype)


@contextlib.contextmanager
def dequantized_state_dict_on(device: torch.device | str, keep: bool = True) -> Iterator[None]:
    """While active, ``state_dict()`` moves each dequantized NF4 weight to ``device`` as soon
    as it is made, so a GPU holds at most one dequantized base weight at a time (instead of
    the whole dequantized base until the caller copies the dict to CPU). Tensor-parallel NF4
    weights are gathered whole; ``keep=False`` (ranks whose copy is dropped anyway) leaves an
    empty meta tensor in their place instead."""
    global _STATE_DICT_DEVICE, _STATE_DICT_KEEP
    previous = _STATE_DICT_DEVICE, _STATE_DICT_KEEP
    _STATE_DICT_DEVICE, _STATE_DICT_KEEP = torch.device(device), keep
    try:
        yield
    finally:
        _STATE_DICT_DEVICE, _STATE_DICT_KEEP = previous


def dequantize_state_dict_post_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """``state_dict`` post hook: replace NF4 entries with plain tensors in their original dtype
    (on the device set by :func:`dequantized_state_dict_on`, if any).

    Checkpoints then hold ordinary tensors that load into a quantized or unquantized model
    alike (loading a plain tensor into an NF4 parameter re-quantizes it via ``copy_``).

    A tensor-parallel NF4 weight (a DTensor of NF4 pieces, ``training._tp_nf4``) becomes a
    DTensor of the dequantized pieces; inside :func:`dequantized_state_dict_on` it is gathered
    right away (every rank calls ``state_dict()``) and kept, full, on that device on the ranks
    it names, so at most one dequantized weight exists at a time.
    """
    key = prefix + "weight"
    value = state_dict.get(key)
    if is_nf4(value):
        state_dict[key] = dequantize(value, device=_STATE_DICT_DEVICE)
    elif getattr(module, "tp_forward", None) is not None and is_nf4(
        getattr(value, "_local_tensor", None)
    ):
        state_dict[key] = _dequantize_pieces(value)


def _dequantize_pieces(value: Any) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    plain = DTensor.from_local(
        dequantize(value._local_tensor),
        value.device_mesh,
        value.placements,
        run_check=False,
        shape=value.shape,
        stride=value.stride(),
    )
    if _STATE_DICT_DEVICE is None:
        return plain
    full = plain.full_tensor()
    del plain
    return full.to(_STATE_DICT_DEVICE) if _STATE_DICT_KEEP else full.new_empty(0, device="meta")
