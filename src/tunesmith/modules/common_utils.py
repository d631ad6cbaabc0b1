"""Model utilities torchtune 0.6.1 exports from ``torchtune.modules`` (``common_utils``):
KV-cache context managers, the NF4 state-dict hook and the layer-slice parser.

The cache helpers work on any model with torchtune's cache API (``setup_caches``,
``caches_are_setup``, ``caches_are_enabled``, ``remove_caches``) and attention modules with a
``kv_cache`` and a ``cache_enabled`` switch: :class:`~tunesmith.modules.TransformerDecoder`,
:class:`~tunesmith.modules.fusion.DeepFusionModel` and the models built on them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Generator
from typing import Any

import torch
from torch import nn

__all__ = [
    "delete_kv_caches",
    "disable_kv_cache",
    "local_kv_cache",
    "reparametrize_as_dtype_state_dict_post_hook",
    "slice_str_to_array",
]


def _nf4_type() -> type | None:
    try:
        from torchao.dtypes.nf4tensor import NF4Tensor
    except ImportError:
        try:
            from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor
        except ImportError:
            return None
    return NF4Tensor


def reparametrize_as_dtype_state_dict_post_hook(
    model: nn.Module,
    state_dict: dict[str, Any],
    *args: Any,
    dtype: torch.dtype = torch.bfloat16,
    offload_to_cpu: bool = True,
    **kwargs: Any,
) -> None:
    """State-dict post hook: every NF4 tensor in ``state_dict`` becomes a plain ``dtype`` tensor
    (on CPU when ``offload_to_cpu``), in place. Register it with
    ``module._register_state_dict_hook(partial(hook, dtype=...))`` so QLoRA checkpoints hold
    dequantized weights. ``args`` / ``kwargs`` are what ``nn.Module`` passes hooks (unused)."""
    nf4 = _nf4_type()
    if nf4 is None:
        return
    for key, value in state_dict.items():
        if isinstance(value, nf4):
            restored = value.to(dtype)
            state_dict[key] = restored.cpu() if offload_to_cpu else restored


def slice_str_to_array(slice_str: str, length: int) -> list[bool]:
    """Which of ``length`` indices a slice or index string selects.

    ``"1:3"``, ``":5"``, ``"2::3"`` are Python slices, ``"4"`` one index, ``"0,4,5"`` a list
    (commas and colons cannot mix).

    >>> slice_str_to_array("1::2", 5)
    [False, True, False, True, False]
    >>> slice_str_to_array("0,4,5", 7)
    [True, False, False, False, True, True, False]

    Raises:
        AssertionError: an index or bound out of ``[0, length)``, a zero step, more than
            three slice parts, or commas mixed with colons (torchtune's exception type).
    """
    if "," in slice_str and ":" in slice_str:
        raise AssertionError(f"Cannot mix commas and colons in {slice_str!r}")
    result = [False] * length
    if "," in slice_str:
        indices = [int(i) for i in slice_str.split(",")]
        if not all(0 <= i < length for i in indices):
            raise AssertionError(f"Index out of range in {slice_str!r} for length {length}")
        for i in indices:
            result[i] = True
        return result
    parts = slice_str.split(":")
    if len(parts) > 3:
        raise AssertionError(f"Invalid slice format {slice_str!r}: at most start:end:step")
    values = [int(p) if p != "" else None for p in parts]
    if len(values) == 1:
        if values[0] is None:
            return [True] * length
        start, end, step = values[0], values[0] + 1, 1
    else:
        start, end = values[0], values[1]
        step = values[2] if len(values) == 3 else None
    if start is not None and not 0 <= start < length:
        raise AssertionError(f"Start index out of range in {slice_str!r} for length {length}")
    if end is not None and not 0 <= end < length:
        raise AssertionError(f"End index out of range in {slice_str!r} for length {length}")
    if step == 0:
        raise AssertionError(f"Step cannot be zero in {slice_str!r}")
    for i in range(start or 0, length if end is None else end, step or 1):
        if 0 <= i < length:
            result[i] = True
    return result


def _cached_attention(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if callable(getattr(m, "kv_cache", None))]


@contextlib.contextmanager
def disable_kv_cache(model: nn.Module) -> Generator[None, None, None]:
    """Run the body without KV caches on a model whose caches are set up; the caches and
    what they hold are untouched, and switched back on at exit.

    Raises:
        ValueError: the model's caches are not set up (``model.setup_caches`` first).
    """
    if not model.caches_are_setup():
        raise ValueError(
            "Model caches must be setup before calling disable_kv_cache! "
            "Please use model.setup_caches() to setup model caches."
        )
    if not model.caches_are_enabled():
        warnings.warn(
            "You are using disable_kv_cache with a model that does not have caches enabled. "
            "This is a no-op and the expected behaviour may not occur.",
            stacklevel=3,
        )
    modules = _cached_attention(model)
    for module in modules:
        module.cache_enabled = False
    try:
        yield
    finally:
        for module in modules:
            module.cache_enabled = True


@contextlib.contextmanager
def local_kv_cache(
    model: nn.Module,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    encoder_max_seq_len: int | None = None,
    decoder_max_seq_len: int | None = None,
) -> Generator[None, None, None]:
    """Set up KV caches (``batch_size``, ``dtype``, on ``device``) for the body and delete
    them at exit. ``decoder_max_seq_len`` defaults to the model's ``max_seq_len``;
    ``encoder_max_seq_len`` is for models with an encoder (fusion layers).

    Raises:
        ValueError: the model's caches are already set up (``delete_kv_caches`` first).
    """
    if model.caches_are_setup():
        raise ValueError(
            "Model caches must be not setup prior to entering this context manager! "
            "Please use delete_kv_caches(model) to delete model caches."
        )
    with torch.device(device):
        model.setup_caches(
            batch_size,
            dtype,
            encoder_max_seq_len=encoder_max_seq_len,
            decoder_max_seq_len=decoder_max_seq_len,
        )
    try:
        yield
    finally:
        delete_kv_caches(model)


def delete_kv_caches(model: nn.Module) -> None:
    """Remove every KV cache of ``model`` (its attention modules' ``kv_cache`` becomes None and
    ``cache_enabled`` False): back to training mode.

    Raises:
        ValueError: the model has no caches set up.
    """
    if not model.caches_are_setup():
        raise ValueError(
            "You have tried to delete model caches, but model.caches_are_setup() is False!"
        )
    model.remove_caches()
    for module in model.modules():
        if hasattr(module, "kv_cache"):
            module.kv_cache = None
            module.cache_enabled = False
