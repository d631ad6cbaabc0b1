"""torch.compile, regionally: each transformer layer compiled on its own, and the loss.

Compiling the repeated layer (rather than the whole model) compiles once, reuses the graph for
every layer, and keeps the embedding / output projection / loss chunking eager. Apply after
activation checkpointing and FSDP2 sharding.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

__all__ = ["compile_loss", "compile_model"]

log = logging.getLogger(__name__)


def _backend() -> str:
    return os.environ.get("TORCH_COMPILE_BACKEND", "inductor")


def compile_model(model: nn.Module, verbose: bool = False, **compile_kwargs: Any) -> nn.Module:
    """Compile each child of ``model.layers`` in place (``module.compile()``); a model without a
    ``layers`` container is compiled whole. Returns ``model`` (same object, same state-dict keys).

    The backend is ``inductor`` unless ``TORCH_COMPILE_BACKEND`` says otherwise.
    """
    compile_kwargs.setdefault("backend", _backend())
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList | nn.ModuleDict | nn.Sequential):
        for layer in layers.children():
            layer.compile(**compile_kwargs)
        if verbose:
            log.info("compiled %d layers (%s)", len(list(layers.children())), compile_kwargs)
    else:
        model.compile(**compile_kwargs)
    return model


def compile_loss(loss: nn.Module, verbose: bool = False, **compile_kwargs: Any) -> nn.Module:
    """Compile a loss module in place. Chunked losses that expose ``compute_cross_entropy``
    (one chunk's projection + CE) get only that method compiled, so the Python chunk loop stays
    eager and a single graph serves every chunk. Returns ``loss``.
    """
    compile_kwargs.setdefault("backend", _backend())
    if hasattr(loss, "compute_cross_entropy"):
        loss.compute_cross_entropy = torch.compile(loss.compute_cross_entropy, **compile_kwargs)
    else:
        loss.compile(**compile_kwargs)
    if verbose:
        log.info("compiled loss %s", type(loss).__name__)
    return loss
