"""Regional compile: each layer compiled, outputs and gradients equal to eager."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.training.activations import apply_activation_checkpointing
from tunesmith.training.compile import compile_loss, compile_model


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.w1 = nn.Linear(dim, 2 * dim, bias=False)
        self.w2 = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w2(F.silu(self.w1(self.norm(x))))


class Tiny(nn.Module):
    """tokens [b, s] -> logits [b, s, 32]."""

    def __init__(self, dim: int = 16, n_layers: int = 3) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(32, dim)
        self.layers = nn.ModuleList([Block(dim) for _ in range(n_layers)])
        self.output = nn.Linear(dim, 32, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(h)


class ChunkedCE(nn.Module):
    """Chunked CE with a per-chunk ``compute_cross_entropy`` (the shape compile_loss targets)."""

    def compute_cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), reduction="sum", ignore_index=-100
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = sum(
            self.compute_cross_entropy(lg, lb)
            for lg, lb in zip(logits.chunk(2, 1), labels.chunk(2, 1))
        )
        return total / (labels != -100).sum()


def _run(model: nn.Module, loss_fn: nn.Module, tokens: torch.Tensor, labels: torch.Tensor):
    model.zero_grad()
    logits = model(tokens)
    loss = loss_fn(logits, labels)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_compiled_layers_and_loss_match_eager() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Tiny()
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    apply_activation_checkpointing(compiled)  # AC then compile, the recipe's order
    compile_model(compiled)
    loss_fn = compile_loss(ChunkedCE())
    assert list(compiled.state_dict()) == keys
    assert all(
        hasattr(layer, "_compiled_call_impl") and layer._compiled_call_impl is not None
        for layer in compiled.layers
    )
    tokens = torch.randint(0, 32, (2, 8))
    labels = tokens.roll(-1, 1)
    labels[:, :3] = -100
    ref = _run(eager, ChunkedCE(), tokens, labels)
    for _ in range(2):  # second call reuses the compiled graphs
        got = _run(compiled, loss_fn, tokens, labels)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], atol=1e-5, rtol=1e-5, msg=name)


def test_compile_backend_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the cheap ``eager`` backend (a dynamo trace, no codegen) results equal eager."""
    monkeypatch.setenv("TORCH_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Tiny(n_layers=2)
    compiled = compile_model(copy.deepcopy(eager))
    plain = nn.Sequential(nn.Linear(4, 4))
    compile_model(plain)  # no `layers`: compiled whole
    assert plain._compiled_call_impl is not None
    tokens = torch.randint(0, 32, (2, 5))
    torch.testing.assert_close(compiled(tokens), eager(tokens), atol=0, rtol=0)
