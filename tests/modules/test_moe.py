"""Mixture of experts: router, grouped experts and auxiliary losses against transformers."""

from __future__ import annotations

import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint
from tunesmith.models import build_decoder, model_type_of, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native
from tunesmith.modules import padding_to_causal_mask
from tunesmith.modules.moe import (
    GroupedExperts,
    MoE,
    TopKRouter,
    grouped_mm_supported,
    moe_layers,
    router_aux_loss,
    router_stats,
    router_z_loss,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["qwen3_moe", "mixtral", "gpt_oss"])
def pair(request, tmp_path_factory):
    """(transformers model, our model with the same weights)."""
    directory = tmp_path_factory.mktemp(request.param)
    hf = make_checkpoint(request.param, directory)
    config, hf_sd = read_checkpoint(directory)
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, model_type_of(spec), config), strict=True)
    return hf, ours


def _tokens(seed: int, b: int = 2, s: int = 23) -> torch.Tensor:
    return torch.randint(3, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


def test_router_outputs_and_expert_counts_equal_transformers(pair):
    hf, ours = pair
    hf_moe = next(m for m in hf.modules() if type(m).__name__.endswith(("SparseMoeBlock", "MLP")))
    our_moe = next(moe_layers(ours))
    x = torch.randn(40, hf.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        router = getattr(hf_moe, "gate", None) or hf_moe.router
        hf_logits, hf_weights, hf_idx = router(x)
        weights, idx, logits = our_moe.router(x)
        expected_out = hf_moe(x[None])
        expected_out = (expected_out[0] if isinstance(expected_out, tuple) else expected_out)[0]
        got_out = our_moe(x[None])[0]
    assert torch.equal(idx, hf_idx)
    assert (logits - hf_logits).abs().max() <= 1e-6
    assert (weights - hf_weights).abs().max() <= 1e-6
    n = our_moe.router.num_experts
    assert torch.equal(
        torch.bincount(idx.reshape(-1), minlength=n),
        torch.bincount(hf_idx.reshape(-1), minlength=n),
    )
    assert (got_out - expected_out).abs().max() <= 1e-6


@pytest.mark.parametrize("masked", [False, True])
def test_aux_loss_equals_transformers(pair, masked):
    hf, ours = pair
    tokens = _tokens(1)
    am = torch.ones_like(tokens)
    if masked:
        am[0, :7] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = hf(
            tokens,
            attention_mask=am if masked else None,
            position_ids=pos,
            output_router_logits=True,
        )
        ours(tokens, mask=padding_to_causal_mask(am.bool()), input_pos=pos)
    got = router_aux_loss(ours, token_mask=am if masked else None)
    assert out.aux_loss is not None
    assert abs(got.item() - out.aux_loss.item()) <= 1e-6
    # z-loss: transformers' Switch Transformers router_z_loss_func, averaged over layers
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        router_z_loss_func,
    )

    expected_z = torch.stack(
        [router_z_loss_func(r.logits.reshape(2, 23, -1)) for r in _last(ours)]
    ).mean()
    assert abs(router_z_loss(ours).item() - expected_z.item()) <= 1e-5


def _last(model):
    return [m.last_routing for m in moe_layers(model)]


def test_router_stats_are_token_fractions(pair):
    _, ours = pair
    with torch.no_grad():
        ours(_tokens(2))
    stats = router_stats(ours)
    n = next(moe_layers(ours)).router.num_experts
    fracs = [stats[f"router/expert_frac_{e}"] for e in range(n)]
    assert abs(sum(fracs) - 1.0) <= 1e-6
    assert stats["router/expert_frac_max"] == max(fracs)
    assert stats["router/expert_frac_min"] == min(fracs)


def test_kv_cache_decoding_equals_transformers(pair):
    hf, ours = pair
    tokens = _tokens(3, b=2, s=12)
    with torch.no_grad():
        expected = hf(tokens).logits
        ours.setup_caches(batch_size=2, dtype=torch.float32, max_seq_len=16)
        try:
            steps = [ours(tokens[:, :8])] + [ours(tokens[:, i : i + 1]) for i in range(8, 12)]
        finally:
            ours.remove_caches()
    got = torch.cat(steps, dim=1)
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("oss", [False, True], ids=["swiglu", "gpt_oss_biased_clamped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_mm_equals_loop_in_output_and_gradient(dtype, oss):
    if not grouped_mm_supported(torch.zeros((), dtype=dtype), 32, 48):
        pytest.skip(f"torch._grouped_mm does not run {dtype} on this device")
    torch.manual_seed(0)
    kw = {"bias": True, "swiglu_limit": 0.5} if oss else {}
    experts = GroupedExperts(32, 48, 6, **kw)
    if oss:
        for b in (experts.gate_bias, experts.up_bias, experts.down_bias):
            torch.nn.init.normal_(b)
    moe = MoE(router=TopKRouter(32, 6, 2, bias=oss), experts=experts).to(dtype)
    x = torch.randn(3, 10, 32, dtype=dtype)
    results = []
    for grouped in (True, False):
        moe.experts.use_grouped_mm = grouped
        moe.zero_grad()
        xi = x.clone().requires_grad_()
        out = moe(xi)
        (out.float() ** 2).sum().backward()
        grads = [xi.grad] + [p.grad for p in moe.parameters()]
        results.append((out.detach(), grads))
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    (a, ga), (b, gb) = results
    assert (a.float() - b.float()).abs().max() <= tol * max(1.0, b.abs().max().item())
    for g1, g2 in zip(ga, gb, strict=True):
        scale = max(1.0, g2.abs().max().item())
        assert (g1.float() - g2.float()).abs().max() <= tol * scale


def test_experts_without_tokens_are_skipped_and_sigmoid_scoring():
    torch.manual_seed(0)
    router = TopKRouter(16, 4, 1, scoring="sigmoid", norm_topk=False)
    moe = MoE(router=router, experts=GroupedExperts(16, 16, 4, use_grouped_mm=False))
    with torch.no_grad():
        router.gate.weight.zero_()
        router.gate.weight[2] = 1.0  # every positive-sum token picks expert 2
    x = torch.rand(1, 5, 16)
    out = moe(x)
    weights, idx, logits = router(x[0])
    assert (idx == 2).all()
    assert torch.allclose(weights[:, 0], torch.sigmoid(logits[:, 2]))
    e = moe.experts
    h = torch.nn.functional.silu(x[0] @ e.gate_proj[2]) * (x[0] @ e.up_proj[2])
    assert torch.allclose(out[0], weights * (h @ e.down_proj[2]), atol=1e-6)


def test_aux_loss_gradient_survives_activation_checkpointing(pair):
    """The router logits kept inside a checkpointed layer still carry the aux-loss gradient."""
    import copy

    from tunesmith.training.activations import apply_activation_checkpointing

    _, ours = pair
    grads = []
    for ckpt in (False, True):
        model = copy.deepcopy(ours).train()
        if ckpt:
            apply_activation_checkpointing(model)
        logits = model(_tokens(4))
        loss = logits.float().pow(2).mean() * 1e-3 + 0.1 * router_aux_loss(model)
        loss = loss + 0.01 * router_z_loss(model)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() <= 1e-6


def test_llama4_kv_cache_decoding_and_routing_equal_transformers(tmp_path):
    """Chunked layers (chunk 8 < 16 tokens), a tempered NoPE layer, sigmoid top-1 routing
    that scales the expert inputs, and a shared expert, decoded token by token."""
    hf = make_checkpoint("llama4", tmp_path)
    config, hf_sd = read_checkpoint(tmp_path)
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, model_type_of(spec), config), strict=True)
    tokens = _tokens(5, b=2, s=16)
    with torch.no_grad():
        expected = hf(tokens).logits
        ours.setup_caches(batch_size=2, dtype=torch.float32, max_seq_len=20)
        try:
            steps = [ours(tokens[:, :6])] + [ours(tokens[:, i : i + 1]) for i in range(6, 16)]
        finally:
            ours.remove_caches()
        assert (torch.cat(steps, dim=1) - expected).abs().max() <= 1e-5
        hf_moe = hf.model.layers[1].feed_forward
        x = torch.randn(30, 64, generator=torch.Generator().manual_seed(0))
        hf_scores, hf_logits = hf_moe.router(x)
        weights, idx, logits = ours.layers[1].mlp.router(x)
        assert (logits - hf_logits).abs().max() <= 1e-6
        assert torch.equal(hf_scores.topk(1).indices, idx)
        assert (ours.layers[1].mlp(x[None])[0] - hf_moe(x[None])[0]).abs().max() <= 1e-6
