"""Output projection that reuses the token embedding matrix (tied embeddings)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TiedLinear"]


class TiedLinear:
    """``x [..., d] -> x @ E.T [..., vocab]`` with ``E`` the embedding's weight.

    Deliberately not an ``nn.Module``: the weight is owned by the embedding, so it appears in
    the state dict once (``tok_embeddings.weight``) and moves with the embedding.
    """

    def __init__(self, embedding: nn.Embedding):
        self.tied_module = embedding

    @property
    def weight(self) -> Tensor:
        """``[vocab, d]``, the embedding matrix."""
        return self.tied_module.weight

    def __call__(self, x: Tensor) -> Tensor:
        weight = self.tied_module.weight
        if type(weight).__name__ == "DTensor" and type(x).__name__ != "DTensor":
            # tensor parallel: the embedding's rows (vocab) are split; project the replicated
            # hidden states with them and gather the logits
            from torch.distributed.tensor import DTensor, Replicate

            mesh = weight.device_mesh
            x = DTensor.from_local(x, mesh, [Replicate()] * mesh.ndim, run_check=False)
            return F.linear(x, weight).full_tensor()
        return F.linear(x, weight)

    def __repr__(self) -> str:
        return f"TiedLinear(tied to {type(self.tied_module).__name__})"
