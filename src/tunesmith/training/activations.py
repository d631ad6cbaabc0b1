"""Activation checkpointing (recompute layers in backward) and activation offloading.

Checkpointing wraps a layer's ``forward`` in non-reentrant ``torch.utils.checkpoint`` *in
place*: parameter names and state-dict keys stay exactly as they were (no
``_checkpoint_wrapped_module.`` prefix), so checkpointers, LoRA key filters and FSDP2 see the
same model. Apply it before ``shard_model`` and ``compile_model``.
"""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "OffloadActivations",
    "apply_activation_checkpointing",
    "get_act_offloading_ctx_manager",
    "is_checkpointed",
    "set_activation_checkpointing",
]

WrapPolicy = set[type[nn.Module]] | Callable[[str, nn.Module], bool]


def is_checkpointed(module: nn.Module) -> bool:
    """Whether ``apply_activation_checkpointing`` wrapped this module's forward."""
    return getattr(module, "_tunesmith_checkpointed", False)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, **kwargs)


def _checkpoint_forward(module: nn.Module) -> None:
    # A method bound to the module itself (not a closure over it): copy.deepcopy rebinds it to
    # the copy, and FSDP2's class swap keeps type(module).forward pointing at the real forward.
    module.forward = types.MethodType(_checkpointed_forward, module)  # type: ignore[method-assign]
    module._tunesmith_checkpointed = True  # type: ignore[assignment]


def apply_activation_checkpointing(
    model: nn.Module,
    auto_wrap_policy: WrapPolicy | None = None,
    every_n_layers: int = 1,
) -> list[str]:
    """Recompute the activations of selected submodules in backward instead of storing them.

    Args:
        model: the model; modified in place.
        auto_wrap_policy: a set of module classes (e.g. ``{TransformerSelfAttentionLayer}``)
            or a callable ``(name, module) -> bool``. ``None`` selects each child of
            ``model.layers`` (every transformer layer of a ``TransformerDecoder``).
        every_n_layers: checkpoint only every n-th selected module (1, 1+n, 1+2n...; n=1 is all),
            trading memory for less recomputation.

    Returns:
        The names of the checkpointed modules.
    """
    if every_n_layers < 1:
        raise ValueError(
            f"activation checkpointing: every_n_layers must be >= 1, got {every_n_layers}"
        )
    if auto_wrap_policy is None:
        layers = getattr(model, "layers", None)
        if not isinstance(layers, nn.ModuleList | nn.ModuleDict | nn.Sequential):
            raise ValueError(
                "enable_activation_checkpointing: the model has no `layers` container; pass "
                "auto_wrap_policy={<layer class>} naming the modules to checkpoint."
            )
        chosen_ids = {id(m) for m in layers.children()}

        def policy(_name: str, module: nn.Module) -> bool:
            return id(module) in chosen_ids

    elif isinstance(auto_wrap_policy, set | frozenset | list | tuple):
        types = tuple(auto_wrap_policy)

        def policy(_name: str, module: nn.Module) -> bool:
            return isinstance(module, types)

    else:
        policy = auto_wrap_policy

    selected: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if module is model or not policy(name, module):
            continue
        # Never nest: a module inside an already-selected one is recomputed with it.
        if any(name.startswith(outer + ".") for outer, _ in selected):
            continue
        selected.append((name, module))

    done = []
    for i, (name, module) in enumerate(selected):
        if i % every_n_layers == 0 and not is_checkpointed(module):
            _checkpoint_forward(module)
            done.append(name)
    return done


def set_activation_checkpointing(
    model: nn.Module, auto_wrap_policy: WrapPolicy | None = None, **kwargs: Any
) -> list[str]:
    """torchtune's name for :func:`apply_activation_checkpointing`."""
    return apply_activation_checkpointing(model, auto_wrap_policy, **kwargs)


_WARNED_NO_OFFLOAD = False


class OffloadActivations(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: tensors autograd saves for backward are moved to CPU pinned memory
    during forward and brought back to the accelerator when backward needs them.

    Only accelerator (CUDA/XPU) activations of at least ``min_offload_size`` bytes move;
    parameters (and views of them) stay put, as does everything else. On a CPU-only run there is
    nothing to offload to, so it warns once and does nothing.

    Args:
        use_pin_memory: copy into pinned host memory (asynchronous copies).
        min_offload_size: smallest tensor (bytes) worth a copy.
        offload_cpu_tensors: test hook: also round-trip CPU tensors (through a copy), so the
            mechanism can be checked on a machine without an accelerator.
    """

    def __init__(
        self,
        use_pin_memory: bool = True,
        min_offload_size: int = 1024,
        offload_cpu_tensors: bool = False,
    ) -> None:
        self.active = offload_cpu_tensors or torch.cuda.is_available() or _xpu_available()
        if not self.active:
            _warn_no_offload()
        self.use_pin_memory = use_pin_memory and torch.cuda.is_available()
        self.min_offload_size = min_offload_size
        self.offload_cpu_tensors = offload_cpu_tensors
        self.num_offloaded = 0
        super().__init__(self._pack, self._unpack)

    def _should_offload(self, tensor: torch.Tensor) -> bool:
        if not self.active or isinstance(tensor, nn.Parameter):
            return False
        if isinstance(tensor._base, nn.Parameter) or type(tensor) is not torch.Tensor:
            return False  # weights (and views) are not activations; skip subclasses (NF4, DTensor)
        if tensor.device.type == "cpu" and not self.offload_cpu_tensors:
            return False
        return tensor.numel() * tensor.element_size() >= self.min_offload_size

    def _pack(self, tensor: torch.Tensor) -> Any:
        if not self._should_offload(tensor):
            return tensor
        host = torch.empty(
            tensor.shape,
            dtype=tensor.dtype,
            layout=tensor.layout,
            pin_memory=self.use_pin_memory,
            device="cpu",
        )
        host.copy_(tensor, non_blocking=self.use_pin_memory)
        self.num_offloaded += 1
        return (tensor.device, host)

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=self.use_pin_memory)


def _xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def _warn_no_offload() -> None:
    global _WARNED_NO_OFFLOAD
    if not _WARNED_NO_OFFLOAD:
        _WARNED_NO_OFFLOAD = True
        warnings.warn(
            "enable_activation_offloading=True has no effect without a CUDA/XPU device "
            "(activations already live in CPU memory); continuing without offloading.",
            stacklevel=3,
        )


def get_act_offloading_ctx_manager(
    model: nn.Module | None, enable_activation_offloading: bool, **kwargs: Any
) -> contextlib.AbstractContextManager[Any]:
    """torchtune's helper: an ``OffloadActivations`` when enabled, else a null context. Wrap
    each forward pass in it (``with ctx: logits = model(tokens)``)."""
    if enable_activation_offloading:
        return OffloadActivations(**kwargs)
    return contextlib.nullcontext()
