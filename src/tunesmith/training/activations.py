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
    "check_activation_offloading",
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

    On an accelerator the copies run on a side stream, not the compute stream: the
    device-to-host copy of a saved tensor waits (by event) only for the kernel that produced
    it, and the compute stream goes on; in backward, unpacking tensor ``i`` also starts the
    host-to-device copies of the ``prefetch`` tensors saved before it (backward needs them
    next), so the compute stream waits on an event rather than on a copy it just issued. The
    caching allocator is told (``record_stream``) which stream still uses each buffer.

    Args:
        use_pin_memory: copy into pinned host memory (asynchronous copies).
        min_offload_size: smallest tensor (bytes) worth a copy.
        prefetch: how many earlier-saved tensors to bring back ahead of need in backward.
        offload_cpu_tensors: test hook: also round-trip CPU tensors (through a copy), so the
            mechanism (bookkeeping and prefetch) can be checked without an accelerator.
    """

    def __init__(
        self,
        use_pin_memory: bool = True,
        min_offload_size: int = 1024,
        prefetch: int = 2,
        offload_cpu_tensors: bool = False,
        **_torchtune: Any,  # use_streams, max_fwd_stash_size: torchtune's knobs, not needed here
    ) -> None:
        self.active = offload_cpu_tensors or torch.cuda.is_available() or _xpu_available()
        if not self.active:
            _warn_no_offload()
        self.use_pin_memory = use_pin_memory and torch.cuda.is_available()
        self.min_offload_size = min_offload_size
        self.prefetch = max(0, int(prefetch))
        self.offload_cpu_tensors = offload_cpu_tensors
        self.num_offloaded = 0
        self.num_prefetched = 0
        self._next_id = 0
        # id -> (device, host tensor, event the d2h copy recorded or None)
        self._host: dict[int, tuple[torch.device, torch.Tensor, Any]] = {}
        # id -> (device tensor being brought back, event its h2d copy recorded or None)
        self._fetched: dict[int, tuple[torch.Tensor, Any]] = {}
        self._side: dict[torch.device, Any] = {}
        super().__init__(self._pack, self._unpack)

    def _should_offload(self, tensor: torch.Tensor) -> bool:
        if not self.active or isinstance(tensor, nn.Parameter):
            return False
        if isinstance(tensor._base, nn.Parameter) or type(tensor) is not torch.Tensor:
            return False  # weights (and views) are not activations; skip subclasses (NF4, DTensor)
        if tensor.device.type == "cpu" and not self.offload_cpu_tensors:
            return False
        return tensor.numel() * tensor.element_size() >= self.min_offload_size

    def _side_stream(self, device: torch.device) -> Any:
        """The copy stream of ``device`` (None on CPU: copies are synchronous there)."""
        if device.type == "cpu":
            return None
        if device not in self._side:
            self._side[device] = torch.Stream(device=device)
        return self._side[device]

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
        side = self._side_stream(tensor.device)
        event = None
        if side is None:
            host.copy_(tensor)
        else:
            side.wait_stream(torch.accelerator.current_stream(tensor.device))
            with side:
                host.copy_(tensor, non_blocking=self.use_pin_memory)
                tensor.record_stream(side)  # the allocator keeps it until the copy is done
                event = side.record_event()
        self.num_offloaded += 1
        key = self._next_id
        self._next_id += 1
        self._host[key] = (tensor.device, host, event)
        return _Saved(self, key)

    def _fetch(self, key: int) -> None:
        """Start bringing tensor ``key`` back to its device (on the side stream)."""
        if key in self._fetched or key not in self._host:
            return
        device, host, event = self._host.pop(key)
        side = self._side_stream(device)
        if side is None:
            self._fetched[key] = (host.to(device, copy=True), None)
            return
        with side:
            if event is not None:
                side.wait_event(event)  # the d2h copy into ``host`` has finished
            out = host.to(device, non_blocking=self.use_pin_memory)
            self._fetched[key] = (out, side.record_event())

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        key = packed.key
        if key in self._fetched:
            self.num_prefetched += 1
        else:
            self._fetch(key)
        for earlier in range(key - 1, max(-1, key - 1 - self.prefetch), -1):
            self._fetch(earlier)  # backward walks the saved tensors newest-first
        out, event = self._fetched.pop(key)
        if event is not None:
            compute = torch.accelerator.current_stream(out.device)
            compute.wait_event(event)
            out.record_stream(compute)
        return out


class _Saved:
    """What autograd keeps for an offloaded tensor: its id. When the graph lets go of it
    (after backward, or a graph that never runs backward), its host / fetched copies go too."""

    __slots__ = ("key", "owner")

    def __init__(self, owner: OffloadActivations, key: int) -> None:
        self.owner, self.key = owner, key

    def __del__(self) -> None:
        self.owner._host.pop(self.key, None)
        self.owner._fetched.pop(self.key, None)


def activation_offloading_context(cfg: Any, model: nn.Module) -> Any:
    """The recipes' offloading context for ``model``'s forward + backward: activations
    offloaded to the host when ``enable_activation_offloading`` is set (checked first by
    :func:`check_activation_offloading`), else a null context."""
    check_activation_offloading(cfg)
    if not cfg.get("enable_activation_offloading", False):
        return contextlib.nullcontext()
    return get_act_offloading_ctx_manager(model, True)


def check_activation_offloading(cfg: Any) -> None:
    """Refuse ``enable_activation_offloading`` without ``enable_activation_checkpointing``.

    torchtune only warns. Without checkpointing every op's saved tensors cross PCIe twice
    per step (many small copies that stall the step), which is almost never what the user
    meant; with it only each layer's input moves. So it is a config mistake: one line.
    """
    from tunesmith.config import ConfigError

    offload = bool(cfg.get("enable_activation_offloading", False))
    if offload and not cfg.get("enable_activation_checkpointing", False):
        raise ConfigError(
            "enable_activation_offloading=True needs enable_activation_checkpointing=True "
            "(offloading every saved tensor without checkpointing is slow): set "
            "enable_activation_checkpointing=True, or enable_activation_offloading=False",
            key="enable_activation_offloading",
        )


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
