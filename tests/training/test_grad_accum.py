"""Gradient accumulation with token-weighted normalisation: 1 x batch 8 == 4 x batch 2."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.training.gradients import clip_grad_norm, count_trainable_tokens, scale_grads

IGNORE = -100


class TinyLM(nn.Module):
    """tokens [b, s] -> logits [b, s, vocab]."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for _ in range(2)]
        )
        self.output = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = h + layer(h)
        return self.output(h)


def _mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 32, (8, 12), generator=g)
    labels = tokens.roll(-1, dims=1).clone()
    # Very different numbers of trained tokens per row: 1 .. 12 (rows are prompts of varying length).
    for row, n_masked in enumerate([0, 11, 3, 9, 6, 1, 10, 4]):
        labels[row, :n_masked] = IGNORE
    return tokens, labels


def _step_big_batch(model: nn.Module, opt: torch.optim.Optimizer, tokens, labels) -> float:
    loss = _mean_ce(model(tokens), labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _step_accumulated(model, opt, tokens, labels, micro: int, naive: bool = False) -> float:
    loss_sum = torch.zeros(())
    num_tokens = torch.zeros((), dtype=torch.long)
    chunks = list(zip(tokens.split(micro), labels.split(micro)))
    for t, lab in chunks:
        n = count_trainable_tokens(lab)
        loss = _mean_ce(model(t), lab)
        if naive:
            (loss / len(chunks)).backward()
        else:
            (loss * n).backward()
        loss_sum += loss.detach() * n
        num_tokens += n
    if not naive:
        scale_grads(model, 1.0 / num_tokens)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return (loss_sum / num_tokens).item()


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_one_by_eight_equals_four_by_two(optim: str) -> None:
    torch.manual_seed(0)
    big = TinyLM()
    acc = copy.deepcopy(big)

    def make(m: nn.Module) -> torch.optim.Optimizer:
        if optim == "sgd":
            return torch.optim.SGD(m.parameters(), lr=1.0)
        return torch.optim.AdamW(m.parameters(), lr=1e-2)

    opt_big, opt_acc = make(big), make(acc)
    for step in range(3):
        tokens, labels = _batch(step)
        loss_big = _step_big_batch(big, opt_big, tokens, labels)
        loss_acc = _step_accumulated(acc, opt_acc, tokens, labels, micro=2)
        assert loss_acc == pytest.approx(loss_big, abs=1e-6)
    for (name, p_big), p_acc in zip(big.named_parameters(), acc.parameters()):
        torch.testing.assert_close(p_acc, p_big, atol=1e-5, rtol=0, msg=name)


def test_naive_mean_of_means_is_different() -> None:
    """The check above has teeth: averaging micro-batch means gives another update."""
    torch.manual_seed(0)
    big = TinyLM()
    naive = copy.deepcopy(big)
    tokens, labels = _batch()
    _step_big_batch(big, torch.optim.SGD(big.parameters(), lr=1.0), tokens, labels)
    _step_accumulated(
        naive, torch.optim.SGD(naive.parameters(), lr=1.0), tokens, labels, 2, naive=True
    )
    diff = max((a - b).abs().max().item() for a, b in zip(big.parameters(), naive.parameters()))
    assert diff > 1e-3


def test_clip_grad_norm_returns_pre_clip_norm_and_clips() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    tokens, labels = _batch()
    _mean_ce(model(tokens), labels).mul(100).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    norm = clip_grad_norm(model, max_norm=1.0)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-5)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert after.item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(model, 0)


def test_scale_grads_skips_missing_grads() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    a.grad = torch.full((3,), 4.0)
    scale_grads([a, b], torch.tensor(0.25))
    assert torch.equal(a.grad, torch.ones(3)) and b.grad is None
