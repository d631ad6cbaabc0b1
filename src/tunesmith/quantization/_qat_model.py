"""The model component the ``qat`` recipe builds: a model builder's output, prepared for QAT.

The recipe rewrites ``cfg.model`` to ``{_component_: tunesmith.quantization.qat_model,
base_component: <the builder>, quantizer: <cfg.quantizer>, ...the builder's arguments}``, so
the finetune recipe's loading, sharding, training loop and saving run unchanged on a
fake-quantized model (whose state-dict keys equal the float model's).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tunesmith.quantization._quantizers import disable_fake_quant, enable_fake_quant

__all__ = ["qat_model"]


class _DelayFakeQuant:
    """Forward pre-hook: fake quantization stays off for the first ``n`` optimizer steps
    (``n * accumulation`` training forwards), then turns on (torchtune's
    ``fake_quant_after_n_steps``)."""

    def __init__(self, model: nn.Module, steps: int, accumulation: int) -> None:
        self.forwards_left = steps * accumulation
        disable_fake_quant(model)

    def __call__(self, model: nn.Module, args: Any) -> None:
        if not model.training:
            return
        if self.forwards_left == 0:
            enable_fake_quant(model)
            self.handle.remove()
        self.forwards_left -= 1


def qat_model(
    base_component: str,
    quantizer: Any,
    fake_quant_after_n_steps: int | None = None,
    gradient_accumulation_steps: int = 1,
    **model_kwargs: Any,
) -> nn.Module:
    """Build ``base_component(**model_kwargs)`` and ``quantizer.prepare`` it for QAT.

    Args:
        base_component: dotted path of the model builder (torchtune names accepted).
        quantizer: a QAT quantizer (``Int8DynActInt4WeightQATQuantizer``, ...).
        fake_quant_after_n_steps: train in floating point for this many optimizer steps first.
        gradient_accumulation_steps: micro-batches per optimizer step (for the delay).
    """
    from tunesmith.config import resolve_component

    if not callable(getattr(quantizer, "prepare", None)):
        raise ValueError(
            f"quantizer {type(quantizer).__name__} has no prepare(); the qat recipe needs a QAT "
            "quantizer such as tunesmith.quantization.Int8DynActInt4WeightQATQuantizer"
        )
    model = resolve_component(base_component, key="model._component_")(**model_kwargs)
    model = quantizer.prepare(model)
    if fake_quant_after_n_steps:
        delay = _DelayFakeQuant(model, int(fake_quant_after_n_steps), gradient_accumulation_steps)
        delay.handle = model.register_forward_pre_hook(delay)
    return model
