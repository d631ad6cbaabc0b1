"""Activation checkpointing recomputes, keeps names, gives identical gradients; offloading."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from tunesmith.training import activations
from tunesmith.training.activations import (
    OffloadActivations,
    apply_activation_checkpointing,
    get_act_offloading_ctx_manager,
    is_checkpointed,
)


class Block(nn.Module):
    """x [b, s, d] -> [b, s, d]; counts forward calls."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.calls = 0

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        self.calls += 1
        return x + scale * self.mlp(self.norm(x))


class Stack(nn.Module):
    def __init__(self, dim: int = 16, n_layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.layers = nn.ModuleList([Block(dim) for _ in range(n_layers)])
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h, scale=0.5)
        return self.head(h)


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(x).pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointing_recomputes_and_matches_eager() -> None:
    torch.manual_seed(0)
    eager = Stack()
    ckpt = copy.deepcopy(eager)
    keys = list(ckpt.state_dict())
    names = apply_activation_checkpointing(ckpt)
    assert names == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert list(ckpt.state_dict()) == keys  # no wrapper prefix in keys
    x = torch.randn(2, 5, 16, requires_grad=False)
    ref = _grads(eager, x)
    for layer in ckpt.layers:
        layer.calls = 0
    got = _grads(ckpt, x)
    assert all(layer.calls == 2 for layer in ckpt.layers)  # forward + recompute in backward
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=0, rtol=0)


def test_every_n_layers_and_policies() -> None:
    model = Stack(n_layers=5)
    assert apply_activation_checkpointing(model, every_n_layers=2) == [
        "layers.0",
        "layers.2",
        "layers.4",
    ]
    assert not is_checkpointed(model.layers[1])
    assert apply_activation_checkpointing(model) == ["layers.1", "layers.3"]  # idempotent per layer
    by_type = Stack()
    assert apply_activation_checkpointing(by_type, {nn.LayerNorm}) == [
        f"layers.{i}.norm" for i in range(4)
    ]
    by_fn = Stack()
    picked = apply_activation_checkpointing(by_fn, lambda name, m: name == "head")
    assert picked == ["head"]
    with pytest.raises(ValueError, match="auto_wrap_policy"):
        apply_activation_checkpointing(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="every_n_layers"):
        apply_activation_checkpointing(Stack(), every_n_layers=0)


def test_offloading_is_a_warned_noop_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    monkeypatch.setattr(activations, "_WARNED_NO_OFFLOAD", False)
    with pytest.warns(UserWarning, match="enable_activation_offloading"):
        ctx = get_act_offloading_ctx_manager(None, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OffloadActivations()  # warns only once per process
    model = Stack()
    with ctx:
        model(torch.randn(2, 3, 16)).sum().backward()
    assert ctx.num_offloaded == 0
    assert get_act_offloading_ctx_manager(None, False).__class__.__name__ == "nullcontext"


def test_offload_round_trip_gives_identical_gradients() -> None:
    """Exercise pack/unpack on CPU tensors (the same code path moves CUDA tensors to pinned host)."""
    torch.manual_seed(0)
    eager = Stack()
    off = copy.deepcopy(eager)
    x = torch.randn(2, 8, 16)
    ref = _grads(eager, x)
    ctx = OffloadActivations(offload_cpu_tensors=True, min_offload_size=64)
    off.zero_grad()
    with ctx:
        loss = off(x).pow(2).mean()
    loss.backward()
    assert ctx.num_offloaded > 0
    for name, param in off.named_parameters():
        torch.testing.assert_close(param.grad, ref[name], atol=0, rtol=0)


def test_offload_with_checkpointing() -> None:
    torch.manual_seed(0)
    eager = Stack()
    both = copy.deepcopy(eager)
    apply_activation_checkpointing(both)
    x = torch.randn(2, 8, 16)
    ref = _grads(eager, x)
    with OffloadActivations(offload_cpu_tensors=True, min_offload_size=64):
        loss = both(x).pow(2).mean()
    loss.backward()
    for name, param in both.named_parameters():
        torch.testing.assert_close(param.grad, ref[name], atol=1e-7, rtol=0)


def test_deepcopy_of_checkpointed_model_trains_its_own_weights() -> None:
    torch.manual_seed(0)
    model = Stack()
    apply_activation_checkpointing(model)
    clone = copy.deepcopy(model)
    x = torch.randn(2, 3, 16)
    clone(x).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in clone.parameters())
    assert is_checkpointed(clone.layers[0])


def test_transformer_decoder_layers_by_class() -> None:
    """On tunesmith's own decoder: checkpoint TransformerSelfAttentionLayer, same gradients."""
    builder = pytest.importorskip("tunesmith.models.builder")
    from tunesmith.models.spec import ModelSpec
    from tunesmith.modules.transformer import TransformerSelfAttentionLayer

    spec = ModelSpec(
        family="LLAMA3", vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        embed_dim=32, intermediate_dim=64, max_seq_len=64, tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    eager = builder.build_decoder(spec)
    ckpt = copy.deepcopy(eager)
    assert apply_activation_checkpointing(ckpt, {TransformerSelfAttentionLayer}) == [
        "layers.0",
        "layers.1",
    ]
    tokens = torch.randint(0, 64, (2, 9))
    for model in (eager, ckpt):
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten())
        loss.backward()
    for (name, p), q in zip(eager.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=0, rtol=0, msg=name)


def test_offload_prefetches_and_frees_with_the_graph() -> None:
    """Backward brings saved tensors back ahead of need (prefetch), gradients are unchanged,
    and nothing stays stashed once the graph is gone (also for a graph never backwarded)."""
    torch.manual_seed(0)
    eager = Stack(n_layers=6)
    off = copy.deepcopy(eager)
    x = torch.randn(2, 8, 16)
    ref = _grads(eager, x)
    ctx = OffloadActivations(offload_cpu_tensors=True, min_offload_size=64, prefetch=2)
    off.zero_grad()
    with ctx:
        loss = off(x).pow(2).mean()
    assert len(ctx._host) == ctx.num_offloaded > 4
    loss.backward()
    assert ctx.num_prefetched > 0
    assert not ctx._host and not ctx._fetched
    for name, param in off.named_parameters():
        torch.testing.assert_close(param.grad, ref[name], atol=0, rtol=0)
    with ctx:
        unused = off(x).sum()
    assert ctx._host
    del unused
    assert not ctx._host


def test_offloading_without_checkpointing_is_refused() -> None:
    from omegaconf import OmegaConf

    from tunesmith.config import ConfigError
    from tunesmith.training.activations import check_activation_offloading

    bad = OmegaConf.create({"enable_activation_offloading": True})
    with pytest.raises(ConfigError, match="needs enable_activation_checkpointing=True") as err:
        check_activation_offloading(bad)
    assert err.value.key == "enable_activation_offloading" and "\n" not in str(err.value)
    check_activation_offloading(
        OmegaConf.create(
            {"enable_activation_offloading": True, "enable_activation_checkpointing": True}
        )
    )
    check_activation_offloading(OmegaConf.create({}))
