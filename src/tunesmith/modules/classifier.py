"""Classifier / reward / value models: a ``TransformerDecoder`` whose output layer is
``Linear(dim, num_classes, bias=False)``, and scoring a batch at each row's last real token.

``classifier_model`` is torchtune's builder (any base builder, output layer replaced); the
family builders (``llama2_classifier``, ``mistral_classifier`` and their LoRA forms) live
in ``tunesmith.models.llama2`` / ``tunesmith.models.mistral`` as in torchtune.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tunesmith.modules.masks import padded_attention_inputs

__all__ = ["classifier_model", "last_token_index", "sequence_scores"]


def classifier_model(num_classes: int, base_model_path: str, **base_model_kwargs: Any) -> nn.Module:
    """torchtune's ``classifier_model``: build ``base_model_path`` (a dotted builder path,
    torchtune names accepted) with ``base_model_kwargs`` and replace its output layer by a
    ``[embed_dim] -> [num_classes]`` linear head (also for models that tie embeddings).

    Raises:
        ValueError: the model has no ``output`` layer, or LoRA on it (not supported, as in
            torchtune).
    """
    from tunesmith.config._components import resolve_component

    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = resolve_component(base_model_path)(**base_model_kwargs)
    decoder = getattr(model, "decoder", model)
    if not hasattr(decoder, "output"):
        raise ValueError("Could not find a valid output layer to adapt.")
    head = decoder.output if isinstance(decoder.output, nn.Module) else None
    if head is not None and any("lora" in name for name, _ in head.named_parameters()):
        raise ValueError(
            "classifier_model does not support LoRA on the output layer: "
            "set apply_lora_to_output=False"
        )
    dim = decoder.tok_embeddings.embedding_dim
    weight = decoder.tok_embeddings.weight
    decoder.output = nn.Linear(
        dim,
        int(num_classes),
        bias=False,
        device=weight.device,
        dtype=weight.dtype,
    )
    return model


def last_token_index(mask: Tensor) -> Tensor:
    """``[b]`` long index of each row's last True in a ``[b, s]`` bool mask (0 if none)."""
    s = mask.shape[1]
    idx = torch.arange(s, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).amax(dim=-1).clamp(min=0)


def sequence_scores(
    model: nn.Module,
    tokens: Tensor,
    mask: Tensor | None = None,
    *,
    pad_id: int | None = None,
) -> Tensor:
    """Scores ``[b, num_classes]`` of each row at its last real token.

    Args:
        model: a classifier ``TransformerDecoder`` (output ``[d] -> [num_classes]``).
        tokens: ``[b, s]`` long, left- or right-padded.
        mask: ``[b, s]`` bool, True at real tokens; default ``tokens != pad_id`` (and all
            True without ``pad_id``). Padding never takes part in attention and positions
            count real tokens, so each row scores as it would alone.

    Returns:
        ``[b, num_classes]`` in the model's dtype (grad flows when enabled).
    """
    if mask is None:
        mask = torch.ones_like(tokens, dtype=torch.bool) if pad_id is None else tokens != pad_id
    mask = mask.bool()
    attention, input_pos = padded_attention_inputs(mask)
    out = model(tokens, mask=attention, input_pos=input_pos)
    out = torch.cat(out, dim=1) if isinstance(out, list) else out  # chunked output
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return out[rows, last_token_index(mask)]
