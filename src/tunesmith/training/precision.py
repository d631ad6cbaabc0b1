"""Precision helpers: dtype names from configs, a scoped default dtype, dtype checks."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "PRECISION_STR_TO_DTYPE",
    "DynamicLossScaler",
    "compute_context",
    "loss_scaler",
    "master_dtype",
    "get_dtype",
    "set_default_dtype",
    "validate_expected_param_dtype",
    "verify_bf16_support",
]

PRECISION_STR_TO_DTYPE: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp64": torch.float64,
    "float64": torch.float64,
    "double": torch.float64,
}


def verify_bf16_support(device: torch.device | None = None) -> bool:
    """Whether bf16 math is supported on ``device`` (CPU, MPS and XPU always; CUDA by capability)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True


def get_dtype(
    dtype: str | torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.dtype:
    """Turn a config's ``dtype`` (``fp32``, ``bf16``, ``fp16``, ``float32``, a ``torch.dtype``)
    into a ``torch.dtype``; ``None`` means fp32.

    Raises:
        ValueError: the name is unknown (the message lists the accepted names), or bf16 was asked
            for on a CUDA device that cannot do it.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        if key not in PRECISION_STR_TO_DTYPE:
            raise ValueError(
                f"dtype: unknown precision {dtype!r}; use one of "
                f"{sorted(set(PRECISION_STR_TO_DTYPE))} (e.g. dtype=bf16)."
            )
        resolved = PRECISION_STR_TO_DTYPE[key]
    if resolved == torch.bfloat16 and device is not None:
        if not verify_bf16_support(torch.device(device)):
            raise ValueError(
                f"dtype: bf16 is not supported on {device}; set dtype=fp32, or use a bf16-capable "
                "GPU (dtype=fp16 also trains, with dynamic loss scaling, less stably)."
            )
    return resolved


@contextlib.contextmanager
def set_default_dtype(dtype: torch.dtype) -> Generator[None, None, None]:
    """Within the block, new floating-point tensors and parameters default to ``dtype``.

    Building a model under ``set_default_dtype(torch.bfloat16)`` allocates it directly in bf16
    instead of fp32 then casting, halving peak memory at construction.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def validate_expected_param_dtype(
    named_params: Iterable[tuple[str, torch.Tensor]] | nn.Module,
    dtype: torch.dtype,
    exclude_param_names: Sequence[str] | None = None,
) -> None:
    """Raise ``ValueError`` naming the first floating-point parameter whose dtype is not ``dtype``.

    Quantized (NF4 / int) parameters are skipped: they are meant to differ. So are parameters
    whose name contains one of ``exclude_param_names`` (torchtune's substring match).
    """
    if isinstance(named_params, nn.Module):
        named_params = named_params.named_parameters()
    for name, param in named_params:
        if exclude_param_names is not None and any(n in name for n in exclude_param_names):
            continue
        if not torch.is_floating_point(param) or type(param.data).__name__ == "NF4Tensor":
            continue
        if param.dtype != dtype:
            raise ValueError(
                f"parameter {name!r} has dtype {param.dtype}, expected {dtype}: build the model "
                f"under set_default_dtype({dtype}) or cast it with model.to({dtype})."
            )


class DynamicLossScaler:
    """Dynamic loss scaling for fp16 training (``dtype: fp16``: fp32 master parameters,
    fp16 autocast compute), the algorithm of ``torch.amp.GradScaler``, for plain or
    FSDP2-sharded parameters.

    ``torch.amp.GradScaler`` checks each rank's gradients on its own (FSDP1's
    ``ShardedGradScaler`` does not know FSDP2's DTensors), so ranks holding different shards
    could disagree on skipping a step; this one unscales the local shards of DTensor
    gradients and agrees on overflow across ranks with one all-reduce. It also accepts fp16
    gradients (``GradScaler`` refuses them), on any device.

    Per optimizer step: ``scale(loss).backward()`` (for each micro-batch), then
    ``unscale_(params)`` (divides the gradients by the scale, finds inf/NaN), then clip, then
    ``step(optimizer)``: skips the step when a gradient overflowed and halves the scale;
    after ``growth_interval`` clean steps in a row it doubles the scale.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = int(growth_interval)
        self._clean_steps = 0
        self._found_inf: bool | None = None
        self.skipped_steps = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale`` (backward through this)."""
        return loss * self.scale_value

    @torch.no_grad()
    def unscale_(self, params: Iterable[torch.Tensor]) -> bool:
        """Divide every gradient by the scale in place; True if any is inf/NaN on any rank."""
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        found = torch.zeros((), dtype=torch.float32)
        if grads:
            locals_ = [getattr(g, "_local_tensor", g) for g in grads]
            found = found.to(locals_[0].device)
            for g in locals_:
                g.mul_(1.0 / self.scale_value)
                found = torch.maximum(found, (~torch.isfinite(g)).any().float())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(found, op=dist.ReduceOp.MAX)
        self._found_inf = bool(found)
        return self._found_inf

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step unless :meth:`unscale_` found an overflow; update the scale. True if stepped."""
        if self._found_inf is None:
            raise RuntimeError("DynamicLossScaler.step: call unscale_(params) first")
        stepped = not self._found_inf
        if stepped:
            optimizer.step()
            self._clean_steps += 1
            if self._clean_steps >= self.growth_interval:
                self.scale_value *= self.growth_factor
                self._clean_steps = 0
        else:
            self.scale_value *= self.backoff_factor
            self._clean_steps = 0
            self.skipped_steps += 1
        self._found_inf = None
        return stepped

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale_value, "clean_steps": self._clean_steps}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale_value = float(state["scale"])
        self._clean_steps = int(state["clean_steps"])


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype parameters are kept in for a run of ``dtype``: fp32 for fp16 (fp16 weights
    and Adam moments lose small updates and overflow; compute runs in fp16 under
    :func:`compute_context`), ``dtype`` otherwise."""
    return torch.float32 if dtype == torch.float16 else dtype


class compute_context:  # noqa: N801  (a context manager, named like one)
    """Reusable context for the forward pass (and loss) of a ``dtype`` run: fp16 autocast on
    ``device`` for fp16, nothing otherwise; wraps ``inner`` (e.g. activation offloading)."""

    def __init__(self, dtype: torch.dtype, device: torch.device, inner: Any = None) -> None:
        self.dtype, self.device_type, self.inner = dtype, torch.device(device).type, inner
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> None:
        self._stack = contextlib.ExitStack()
        if self.dtype == torch.float16:
            self._stack.enter_context(torch.autocast(self.device_type, dtype=torch.float16))
        if self.inner is not None:
            self._stack.enter_context(self.inner)

    def __exit__(self, *exc: Any) -> None:
        assert self._stack is not None
        self._stack.__exit__(*exc)
        self._stack = None


def loss_scaler(dtype: torch.dtype, optimizer_in_bwd: bool) -> DynamicLossScaler | None:
    """A :class:`DynamicLossScaler` for fp16 training, None otherwise.

    Raises:
        ConfigError: fp16 with ``optimizer_in_bwd`` (parameters step inside backward, before
            an overflow could be seen and the step skipped).
    """
    if dtype != torch.float16:
        return None
    if optimizer_in_bwd:
        from tunesmith.config import ConfigError

        raise ConfigError(
            "dtype=fp16 trains with dynamic loss scaling, which must see every gradient before "
            "any parameter steps; optimizer_in_bwd=True steps inside backward: set "
            "optimizer_in_bwd=False, or dtype=bf16 / fp32",
            key="optimizer_in_bwd",
        )
    return DynamicLossScaler()
