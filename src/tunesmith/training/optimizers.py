"""Optimizers: step-in-backward (per-parameter optimizers) and low-bit AdamW.

``OptimizerInBackward`` updates each parameter from inside ``loss.backward()`` the moment its
gradient is ready, then frees that gradient, so a full finetune never holds all gradients at
once. It is a ``torch.optim.Optimizer``: LR schedulers, ``get_lr`` and checkpointing work on it
unchanged. It cannot be combined with gradient accumulation or gradient clipping (each
parameter is stepped before the others' gradients exist); ``validate_optimizer_in_backward``
says so with the config keys to change.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = [
    "OptimizerInBackward",
    "bnb_optimizer",
    "low_bit_adamw",
    "validate_optimizer_in_backward",
]

OptimizerFactory = Callable[..., Optimizer]


def _named(
    params: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | nn.Module,
) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, nn.Module):
        params = params.named_parameters()
    named: list[tuple[str, torch.Tensor]] = []
    for i, item in enumerate(params):
        if isinstance(item, tuple):
            named.append((str(item[0]), item[1]))
        elif isinstance(item, dict):
            raise TypeError(
                "OptimizerInBackward takes parameters (or model.named_parameters()), not param "
                "groups: every parameter gets its own optimizer."
            )
        else:
            named.append((str(i), item))
    return [(name, p) for name, p in named if p.requires_grad]


class OptimizerInBackward(Optimizer):
    """Run ``optimizer_cls([param], **optimizer_kwargs).step()`` for each parameter inside
    backward, via ``Tensor.register_post_accumulate_grad_hook``.

    Args:
        params: ``model.named_parameters()`` (preferred: the state dict is keyed by name and so
            survives a rebuilt model), a module, or plain parameters (keyed by position).
            Parameters with ``requires_grad=False`` are skipped.
        optimizer_cls: an optimizer class or any callable ``(list[Tensor], **kwargs) ->
            Optimizer``, e.g. ``torch.optim.AdamW`` or ``torchao.optim.AdamW8bit``.
        **optimizer_kwargs: passed to every per-parameter optimizer (``lr``, ``weight_decay``...).

    ``param_groups`` are the per-parameter optimizers' own group dicts, so an LR scheduler built
    on this object changes every parameter's lr. ``step()`` and ``zero_grad()`` are no-ops kept
    so a recipe's loop (and the scheduler's "step before scheduler" check) need no branches.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | nn.Module,
        optimizer_cls: OptimizerFactory,
        **optimizer_kwargs: Any,
    ) -> None:
        named = _named(params)
        if not named:
            raise ValueError("OptimizerInBackward: no trainable parameters (requires_grad=True)")
        self.optimizers: dict[str, Optimizer] = {}
        self._hook_handles: list[Any] = []
        for name, param in named:
            if name in self.optimizers:
                raise ValueError(f"OptimizerInBackward: parameter name {name!r} appears twice")
            opt = optimizer_cls([param], **optimizer_kwargs)
            self.optimizers[name] = opt
            self._hook_handles.append(param.register_post_accumulate_grad_hook(_step_hook(opt)))
        first = next(iter(self.optimizers.values()))
        super().__init__([p for _, p in named], dict(first.defaults))
        # Share the per-parameter optimizers' group dicts: scheduler writes reach them directly.
        self.param_groups = [opt.param_groups[0] for opt in self.optimizers.values()]

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """No-op: parameters were already updated during backward."""
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop any gradient left behind (e.g. of parameters that got no gradient signal)."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizers": {param_name: per-parameter optimizer state dict}}``."""
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("optimizers")
        if saved is None:
            raise ValueError(
                "OptimizerInBackward.load_state_dict: expected a dict saved by "
                "OptimizerInBackward.state_dict() (key 'optimizers'); was this checkpoint made "
                "with optimizer_in_bwd=False? Resume with the same optimizer_in_bwd setting."
            )
        missing = sorted(set(self.optimizers) - set(saved))
        unexpected = sorted(set(saved) - set(self.optimizers))
        if missing or unexpected:
            raise ValueError(
                "OptimizerInBackward.load_state_dict: parameter names differ from the checkpoint: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])

    def remove_hooks(self) -> None:
        """Detach from the parameters (after which backward no longer steps them)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()


def _step_hook(opt: Optimizer) -> Callable[[torch.Tensor], None]:
    def hook(_param: torch.Tensor) -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    return hook


def validate_optimizer_in_backward(
    gradient_accumulation_steps: int = 1, clip_grad_norm: float | None = None
) -> None:
    """Raise a ``ValueError`` naming the config key when a setting cannot work with
    ``optimizer_in_bwd=True``."""
    if gradient_accumulation_steps and gradient_accumulation_steps > 1:
        raise ValueError(
            "optimizer_in_bwd=True steps every parameter during each backward, so "
            f"gradient_accumulation_steps={gradient_accumulation_steps} cannot work: set "
            "gradient_accumulation_steps=1 (raise batch_size instead) or optimizer_in_bwd=False."
        )
    if clip_grad_norm is not None:
        raise ValueError(
            "optimizer_in_bwd=True updates each parameter before the global gradient norm is "
            "known, so clip_grad_norm cannot be applied: set clip_grad_norm=null or "
            "optimizer_in_bwd=False."
        )


def low_bit_adamw(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], bits: int = 8, **kwargs: Any
) -> Optimizer:
    """torchao's ``AdamW8bit`` / ``AdamW4bit`` (block-quantized optimizer state: ~2x / ~4x less
    optimizer memory than fp32 AdamW). Tensors under 4096 elements keep fp32 state.

    The update is ``torch.compile``d by torchao: it runs on CUDA and on CPU (where the first
    step compiles for several seconds and needs a C++ compiler).
    """
    if bits not in (4, 8):
        raise ValueError(f"low_bit_adamw: bits must be 4 or 8, got {bits}")
    try:
        ao_optim = importlib.import_module("torchao.optim")
    except ImportError as exc:  # pragma: no cover - torchao is a core dependency
        raise ImportError(
            "low-bit AdamW needs torchao (a tunesmith dependency): pip install 'torchao>=0.10'"
        ) from exc
    params = list(params)
    if _any_cpu(params) and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        raise RuntimeError(
            f"optimizer: torchao's AdamW{bits}bit compiles its update with torch.compile, which on "
            "CPU needs a C++ compiler (g++ or clang++) on PATH; install one, or use "
            "torch.optim.AdamW (or run on a GPU)."
        )
    cls = ao_optim.AdamW8bit if bits == 8 else ao_optim.AdamW4bit
    return cls(params, **kwargs)


def _any_cpu(params: list[Any]) -> bool:
    for item in params:
        group = item["params"] if isinstance(item, dict) else [item]
        if any(isinstance(p, torch.Tensor) and p.device.type == "cpu" for p in group):
            return True
    return False


def bnb_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    name: str = "PagedAdamW8bit",
    **kwargs: Any,
) -> Optimizer:
    """A bitsandbytes optimizer by class name (``PagedAdamW8bit``, ``AdamW8bit``,
    ``PagedAdamW32bit``...). Needs ``pip install 'tunesmith[bnb]'`` and, for its kernels, CUDA.
    """
    try:
        bnb_optim = importlib.import_module("bitsandbytes.optim")
    except ImportError as exc:
        raise ImportError(
            f"optimizer bitsandbytes.optim.{name} needs bitsandbytes: "
            "pip install 'tunesmith[bnb]' (or use tunesmith.training.low_bit_adamw, from torchao)"
        ) from exc
    if not hasattr(bnb_optim, name):
        raise ValueError(f"bitsandbytes.optim has no optimizer named {name!r}")
    return getattr(bnb_optim, name)(params, **kwargs)
