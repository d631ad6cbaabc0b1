"""torchtune-named quantizers over torchao's ``quantize_`` API (post-training and QAT).

Post-training (``quantize(model) -> model``, in place):

=================================  =========  ==============================================
class                              mode       torchao config
=================================  =========  ==============================================
``Int8WeightOnlyQuantizer``        ``8w``     ``Int8WeightOnlyConfig`` (per-row int8 weights)
``Int8DynActInt4WeightQuantizer``  ``8da4w``  ``Int8DynamicActivationIntxWeightConfig``
                                              (int8 per-token dynamic activations, int4
                                              symmetric per-group weights)
``Int4WeightOnlyQuantizer``        ``4w``     CUDA: ``Int4WeightOnlyConfig`` (tinygemm tile
                                              packing, bf16); CPU: ``IntxWeightOnlyConfig``
                                              (int4 per-group)
=================================  =========  ==============================================

Quantization-aware training (``prepare(model)`` swaps linears for fake-quantized ones,
``convert(model)`` turns them into the quantized model the matching PTQ quantizer makes):
``Int8DynActInt4WeightQATQuantizer`` (``8da4w-qat``) and ``Int4WeightOnlyQATQuantizer``
(``4w-qat``, always the int4 per-group ``IntxWeightOnlyConfig`` scheme so the fake
quantization and the converted model agree on every device). LoRA layers become
:class:`~tunesmith.quantization.QATLoRALinear`. Only ``nn.Linear`` layers (and LoRA
linears) are quantized; embeddings stay in floating point, as in torchtune.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunesmith.quantization._qat_lora import (
    merge_qat_lora_linears,
    swap_lora_linear_with_qat,
)
from tunesmith.utils import get_logger

__all__ = [
    "Int4WeightOnlyQATQuantizer",
    "Int4WeightOnlyQuantizer",
    "Int4WeightOnlyQATQuantizerModuleSwap",
    "Int8DynActInt4WeightQATQuantizer",
    "Int8DynActInt4WeightQATQuantizerModuleSwap",
    "Int8DynActInt4WeightQuantizer",
    "Int8WeightOnlyQuantizer",
    "disable_fake_quant",
    "enable_fake_quant",
    "get_quantizer_mode",
]

log = get_logger(__name__)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _base_linear_filter(model: nn.Module) -> Any:
    """``quantize_`` filter: ``nn.Linear`` layers that are not a LoRA adapter's own A / B."""
    lora_type = _lora_linear_type()
    adapters = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, lora_type))

    def keep(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and not fqn.startswith(adapters)

    return keep


def _check_groups(model: nn.Module, groupsize: int | None, key: str) -> None:
    """Every quantized linear's ``in_features`` must split into groups of ``groupsize``."""
    if groupsize is None:
        return
    if groupsize <= 0:
        raise ValueError(f"quantizer.{key} must be a positive integer, got {groupsize}")
    keep = _base_linear_filter(model)
    bad = [
        (name, m.in_features)
        for name, m in model.named_modules()
        if keep(m, name) and m.in_features % groupsize
    ]
    bad += [
        (name, m.in_dim)
        for name, m in model.named_modules()
        if isinstance(m, _lora_linear_type()) and m.in_dim % groupsize
    ]
    if bad:
        name, dim = bad[0]
        raise ValueError(
            f"quantizer.{key}={groupsize} does not divide the input size {dim} of {name} "
            f"({len(bad)} layer(s) affected); pick a {key} that divides every layer's input size"
        )


def _lora_linear_type() -> type:
    from tunesmith.modules.peft import LoRALinear

    return LoRALinear


class _PTQQuantizer:
    """Base of the post-training quantizers: ``quantize(model)`` applies ``torchao_config``."""

    mode: str = ""
    _groupsize_key = "groupsize"
    groupsize: int | None = None

    def torchao_config(self, device: torch.device) -> Any:
        raise NotImplementedError

    def quantize(self, model: nn.Module) -> nn.Module:
        """Quantize every ``nn.Linear`` of ``model`` in place; returns the model."""
        from torchao.quantization import quantize_

        _check_groups(model, self.groupsize, self._groupsize_key)
        config = self.torchao_config(_model_device(model))
        quantize_(model, config, filter_fn=_base_linear_filter(model))
        return model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Int8WeightOnlyQuantizer(_PTQQuantizer):
    """int8 weights (one scale per output row), activations in floating point."""

    mode = "8w"

    def torchao_config(self, device: torch.device) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()


class Int8DynActInt4WeightQuantizer(_PTQQuantizer):
    """8da4w: int8 per-token dynamic activations, int4 symmetric weights in groups of
    ``groupsize`` input features (torchtune's default 256)."""

    mode = "8da4w"

    def __init__(self, groupsize: int = 256) -> None:
        self.groupsize = int(groupsize)

    def torchao_config(self, device: torch.device) -> Any:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig
        from torchao.quantization.granularity import PerGroup

        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(self.groupsize)
        )


class Int4WeightOnlyQuantizer(_PTQQuantizer):
    """int4 weights in groups of ``groupsize``; activations in floating point.

    On CUDA this is torchao's tinygemm int4 kernel path (``inner_k_tiles`` = its tile
    packing; the model should be bf16); elsewhere the int4 per-group ``IntxWeightOnlyConfig``.
    """

    mode = "4w"

    def __init__(self, groupsize: int = 128, inner_k_tiles: int = 8) -> None:
        self.groupsize = int(groupsize)
        self.inner_k_tiles = int(inner_k_tiles)

    def torchao_config(self, device: torch.device) -> Any:
        if device.type == "cuda":
            import dataclasses

            from torchao.quantization import Int4WeightOnlyConfig

            fields = {f.name for f in dataclasses.fields(Int4WeightOnlyConfig)}
            return Int4WeightOnlyConfig(
                **int4_cuda_kwargs(fields, self.groupsize, self.inner_k_tiles)
            )
        return _intx_weight_only(self.groupsize)


def int4_cuda_kwargs(fields: set[str], groupsize: int, inner_k_tiles: int) -> dict[str, Any]:
    """``Int4WeightOnlyConfig`` keyword arguments for the tinygemm tile-packed layout, chosen
    from the config's ``fields`` (its dataclass field names), since torchao renamed them:

    - ``int4_packing_format`` (v2 tensors, torchao >= 0.15): ``"tile_packed_to_4d"``, plus
      ``int4_tile_packed_ntile`` = ``inner_k_tiles`` where it exists (later releases; before,
      the packing is fixed at 8 tiles and another value is refused);
    - ``layout`` (torchao 0.10 - 0.14): ``TensorCoreTiledLayout(inner_k_tiles)`` with
      ``version=1`` where a ``version`` field exists.
    """
    kwargs: dict[str, Any] = {"group_size": groupsize}
    if "int4_packing_format" in fields:
        kwargs["int4_packing_format"] = _tile_packed_format()
        if "int4_tile_packed_ntile" in fields:
            kwargs["int4_tile_packed_ntile"] = inner_k_tiles
        elif inner_k_tiles != 8:
            from tunesmith.config import ConfigError

            raise ConfigError(
                f"quantizer.inner_k_tiles={inner_k_tiles}: the installed torchao packs int4 "
                "weights in 8 tiles only; set inner_k_tiles: 8 or upgrade torchao",
                key="quantizer.inner_k_tiles",
            )
    elif "layout" in fields:
        from torchao.dtypes import TensorCoreTiledLayout

        kwargs["layout"] = TensorCoreTiledLayout(inner_k_tiles=inner_k_tiles)
        if "version" in fields:
            kwargs["version"] = 1
    return kwargs


def _tile_packed_format() -> Any:
    """torchao's ``Int4PackingFormat.TILE_PACKED_TO_4D`` (its string value where the enum
    has moved)."""
    try:
        from torchao.quantization.quantize_.workflows.int4.int4_packing_format import (
            Int4PackingFormat,
        )
    except ImportError:
        return "tile_packed_to_4d"
    return Int4PackingFormat.TILE_PACKED_TO_4D


def _intx_weight_only(groupsize: int) -> Any:
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(groupsize))


class _QATQuantizer:
    """Base of the QAT quantizers: ``prepare`` (fake quantization) then ``convert``."""

    mode: str = ""

    def __init__(self, groupsize: int) -> None:
        self.groupsize = int(groupsize)

    def base_config(self) -> Any:
        """The torchao PTQ config that ``convert`` applies (and ``prepare`` imitates)."""
        raise NotImplementedError

    def fake_quantize_configs(self) -> tuple[Any, Any]:
        """``(activation config or None, weight config)`` torchao derives from the PTQ config."""
        from torchao.quantization.qat.fake_quantize_config import _infer_fake_quantize_configs

        return _infer_fake_quantize_configs(self.base_config())

    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap ``nn.Linear`` -> ``FakeQuantizedLinear`` and LoRA -> ``QATLoRALinear``."""
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        _check_groups(model, self.groupsize, "groupsize")
        act, weight = self.fake_quantize_configs()
        swap_lora_linear_with_qat(model, act, weight)
        config = QATConfig(self.base_config(), step="prepare")
        quantize_(model, config, filter_fn=_base_linear_filter(model))
        return model

    def convert(self, model: nn.Module) -> nn.Module:
        """Merge QAT LoRA layers, then quantize every fake-quantized linear for real."""
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        act, weight = self.fake_quantize_configs()
        merge_qat_lora_linears(model, act, weight)
        quantize_(model, QATConfig(self.base_config(), step="convert"))
        return model

    def quantize(self, model: nn.Module) -> nn.Module:
        """``prepare`` then ``convert``: a model trained with QAT, quantized (torchtune)."""
        return self.convert(self.prepare(model))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(groupsize={self.groupsize})"


class Int8DynActInt4WeightQATQuantizer(_QATQuantizer):
    """QAT for 8da4w (see :class:`Int8DynActInt4WeightQuantizer`)."""

    mode = "8da4w-qat"

    def __init__(self, groupsize: int = 256) -> None:
        super().__init__(groupsize)

    def base_config(self) -> Any:
        return Int8DynActInt4WeightQuantizer(self.groupsize).torchao_config(torch.device("cpu"))


class Int4WeightOnlyQATQuantizer(_QATQuantizer):
    """QAT for int4 per-group weight-only quantization (``IntxWeightOnlyConfig`` on every
    device; ``inner_k_tiles`` is accepted for torchtune configs and has no effect)."""

    mode = "4w-qat"

    def __init__(self, groupsize: int = 128, inner_k_tiles: int = 8) -> None:
        super().__init__(groupsize)

    def base_config(self) -> Any:
        return _intx_weight_only(self.groupsize)


# torchtune's older module-swap QAT names: the same quantizers here
Int8DynActInt4WeightQATQuantizerModuleSwap = Int8DynActInt4WeightQATQuantizer
Int4WeightOnlyQATQuantizerModuleSwap = Int4WeightOnlyQATQuantizer


def get_quantizer_mode(quantizer: Any) -> str | None:
    """torchtune's short name of a quantizer (``8da4w``, ``4w``, ``8w``, ``8da4w-qat``, ...),
    or None for an object that is not one of tunesmith's quantizers."""
    return getattr(quantizer, "mode", None) or None


def _fake_quantizers(model: nn.Module) -> list[nn.Module]:
    from torchao.quantization.qat import FakeQuantizerBase

    return [m for m in model.modules() if isinstance(m, FakeQuantizerBase)]


def enable_fake_quant(model: nn.Module) -> None:
    """Turn fake quantization on in every fake quantizer of ``model``."""
    for m in _fake_quantizers(model):
        m.enabled = True


def disable_fake_quant(model: nn.Module) -> None:
    """Turn fake quantization off (the layers compute in floating point until re-enabled)."""
    for m in _fake_quantizers(model):
        m.enabled = False
