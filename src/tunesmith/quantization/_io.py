"""Save and load torchao-quantized models.

A quantized checkpoint is a folder with

- ``model-<mode>.pt``: ``torch.save`` of the quantized state dict (torchao tensor
  subclasses; loads with ``torch.load(weights_only=True)``),
- ``quantization.json``: the scheme (``mode``, the quantizer's config node), the model's
  config node (self-contained: a ``build_from_hf`` model carries its ``config.json`` inline),
  dtype, the device type it was quantized on (``quantized_on``: the layout/packing depends on
  it, e.g. int4 is tile-packed for CUDA's tinygemm kernel and per-group elsewhere), the
  weight tensor types (``tensor_types``), torch and torchao versions.

:func:`load_quantized_model` rebuilds the model from that folder: it builds the float model
on the meta device, applies the same quantization *for the recorded device type* to get the
same tensor-subclass layout, and assigns the saved tensors. For the ``generate`` recipe set::

    model:        {_component_: tunesmith.quantization.load_quantized_model, checkpoint_dir: DIR}
    checkpointer: {_component_: tunesmith.quantization.QuantizedCheckpointer, checkpoint_dir: DIR}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["QuantizedCheckpointer", "load_quantized_model", "save_quantized"]

METADATA_FILE = "quantization.json"


def save_quantized(
    model: nn.Module,
    output_dir: str | os.PathLike[str],
    *,
    mode: str,
    quantizer_config: dict[str, Any],
    model_config: dict[str, Any],
    dtype: torch.dtype,
) -> Path:
    """Write ``model-<mode>.pt`` and ``quantization.json`` to ``output_dir``; returns the
    weights file. Writes go to temporary names first, so a crash leaves no half file."""
    import torchao

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"model-{mode}.pt"
    tmp = weights.with_name(weights.name + ".tmp")
    state = model.state_dict()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, weights)
    meta = {
        "mode": mode,
        "weights": weights.name,
        "quantizer": quantizer_config,
        "model": model_config,
        "dtype": str(dtype).removeprefix("torch."),
        "quantized_on": _device_type(model),
        "tensor_types": _tensor_types(state),
        "torch_version": torch.__version__,
        "torchao_version": torchao.__version__,
    }
    tmp_meta = folder / (METADATA_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, folder / METADATA_FILE)
    return weights


def _device_type(model: nn.Module) -> str:
    return next((p.device.type for p in model.parameters()), "cpu")


def _tensor_types(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{key: tensor class}`` for the quantized (tensor-subclass) entries."""
    return {k: type(v).__name__ for k, v in state.items() if type(v) not in (torch.Tensor,)}


def _read_metadata(checkpoint_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    folder = Path(checkpoint_dir)
    path = folder / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {METADATA_FILE}; point checkpoint_dir at the output_dir of a "
            "`tunesmith run quantize` run"
        )
    return folder, json.loads(path.read_text())


def _load_state_dict(folder: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    import torchao  # noqa: F401  (registers the tensor subclasses torch.load needs)

    return torch.load(folder / meta["weights"], map_location="cpu", weights_only=True)


def load_quantized_model(
    checkpoint_dir: str | os.PathLike[str], device: str | torch.device | None = None
) -> nn.Module:
    """The quantized model saved by :func:`save_quantized` (eval mode), on ``device``
    (default: the current default device, so ``with torch.device(...)`` works)."""
    from tunesmith.config import ConfigError, instantiate

    folder, meta = _read_metadata(checkpoint_dir)
    dtype = getattr(torch, meta.get("dtype", "float32"))
    quantized_on = torch.device(meta.get("quantized_on", "cpu"))  # older folders: CPU
    if quantized_on.type != "cpu" and not _available(quantized_on):
        raise ConfigError(
            f"{folder / METADATA_FILE}: quantized on {quantized_on.type} (its weight layout only "
            f"runs there) but no {quantized_on.type} device is available; load it on one, or "
            "quantize the float model again on this machine",
            key="checkpoint_dir",
        )
    with torch.device("meta"):
        model = instantiate(meta["model"])
    model.to(dtype=dtype)
    quantizer = instantiate(meta["quantizer"])
    # the tensor-subclass layout comes from quantizing the skeleton the same way, on the
    # same kind of device (CUDA int4 is tile-packed; CPU int4 is not)
    model.to_empty(device=quantized_on)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    quantizer.quantize(model)
    state = _load_state_dict(folder, meta)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{folder / meta['weights']} does not fit the model in {METADATA_FILE}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    recorded = meta.get("tensor_types")
    if recorded is not None and (built := _tensor_types(model.state_dict())) != recorded:
        key = next(k for k in sorted(set(built) | set(recorded)) if built.get(k) != recorded.get(k))
        raise ConfigError(
            f"{folder / METADATA_FILE}: {key} was saved as {recorded.get(key)} but rebuilds as "
            f"{built.get(key)} (torchao {meta.get('torchao_version')} saved it); install that "
            "torchao version or quantize again",
            key="checkpoint_dir",
        )
    target = torch.device(device) if device is not None else torch.get_default_device()
    return model.to(target).eval()


def _available(device: torch.device) -> bool:
    module = getattr(torch, device.type, None)
    return bool(module is not None and hasattr(module, "is_available") and module.is_available())


class QuantizedCheckpointer:
    """Checkpointer interface over a quantized folder (``load_checkpoint() -> {"model": sd}``)
    so recipes that load weights through a checkpointer (``generate``) accept it.

    Saving is not supported: a quantized model is an end product.
    """

    def __init__(self, checkpoint_dir: str | os.PathLike[str], **_ignored: Any) -> None:
        self.folder, self.metadata = _read_metadata(checkpoint_dir)

    def load_checkpoint(self) -> dict[str, Any]:
        return {"model": _load_state_dict(self.folder, self.metadata)}

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "a quantized checkpoint is read-only; finetune the float model and quantize again"
        )
