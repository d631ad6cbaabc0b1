"""Merged LoRA / DoRA weights that equal base checkpoint + adapter, in the base's dtype.

A LoRA run may hold the frozen base in another dtype than the checkpoint stores (bf16
training on an fp32 checkpoint) or quantized (QLoRA's NF4), so the model's own copy of a
base tensor is a rounded one. Merging into that copy and casting back to the stored dtype
would write rounded values for every tensor the adapter never touched (what PEFT's
``merge_and_unload`` on the real base does not do). Instead the merge starts from the base
checkpoint as stored:

* tensors the adapter does not touch are the base checkpoint's tensors, bit for bit;
* an adapted ``weight [out, in]`` is ``W + s B A`` (LoRA) or
  ``m * (W + s B A) / ||W + s B A||_row`` (DoRA), ``s = alpha / rank``, computed in fp32 from
  the stored ``W`` and cast to ``W``'s stored dtype.

The base is re-read from its files at save time (nothing is kept in memory during
training); when those files changed since the load, the model's own copy is used and a
warning says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunesmith.modules.peft import get_merged_lora_ckpt, is_adapter_key

__all__ = ["FileStamps", "merge_adapter_into_base"]

logger = logging.getLogger(__name__)


class FileStamps:
    """Size and modification time of the base files, to tell whether they changed."""

    def __init__(self, files: Sequence[str | os.PathLike[str]]) -> None:
        self._stamps = {Path(f): self._stamp(Path(f)) for f in files}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def changed(self) -> list[Path]:
        """The files whose size or mtime differ from when the stamps were taken."""
        return [p for p, s in self._stamps.items() if s is None or self._stamp(p) != s]


def merge_adapter_into_base(
    model_sd: Mapping[str, torch.Tensor],
    base_sd: Mapping[str, torch.Tensor] | None,
    adapter_config: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """Native merged weights (no adapter keys) of a LoRA / DoRA model.

    Args:
        model_sd: the trained model's native state dict: base keys (``...weight [out, in]``,
            possibly rounded to the training dtype) and adapter keys (``lora_a.weight [r, in]``,
            ``lora_b.weight [out, r]``, ``magnitude [out]``).
        base_sd: the base checkpoint's native state dict as stored (original dtype and
            values), or None to merge into the model's own copy.
        adapter_config: ``{"r", "lora_alpha", ...}``; its optional ``"fully_trained"`` lists
            keys trained fully next to the adapters (a vision model's merger / projection
            built ``"full"``), kept as the model holds them, not taken from the base.

    Returns:
        ``{key: tensor}`` with every non-adapter key of ``model_sd``: from ``base_sd`` when it
        holds the key with the same shape, else the model's tensor; adapted weights merged
        in fp32 and cast to the base tensor's dtype.
    """
    merged: dict[str, torch.Tensor] = {}
    fallback: list[str] = []
    trained = set(adapter_config.get("fully_trained") or ())
    for key, tensor in model_sd.items():
        if is_adapter_key(key) or key in trained:
            merged[key] = tensor
            continue
        base = None if base_sd is None else base_sd.get(key)
        if base is not None and tuple(base.shape) == tuple(tensor.shape):
            merged[key] = base
        else:
            merged[key] = tensor
            if base_sd is not None:
                fallback.append(key)
    if fallback:
        logger.warning(
            "the base checkpoint lacks %d tensor(s) of the trained model (e.g. %s); they are "
            "saved as the model holds them",
            len(fallback),
            fallback[0],
        )
    out = get_merged_lora_ckpt(
        merged, rank=int(adapter_config["r"]), alpha=float(adapter_config["lora_alpha"])
    )
    return {k: v for k, v in out.items() if not is_adapter_key(k)}
