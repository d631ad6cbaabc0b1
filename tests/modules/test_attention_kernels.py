"""Attention kernel choice (pure functions) and the kernels' numerics, on CPU.

Reference: one SDPA call over k/v expanded to the query heads with a block-causal (+ window)
mask built here element by element, or an explicit soft-capped softmax.
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.modules import attention_kernels as ak
from tunesmith.modules.attention_kernels import (
    Documents,
    dense_attention,
    dense_strategy,
    document_attention,
    document_strategy,
)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
LENS = [5, 17, 1, 9]


@pytest.mark.parametrize(
    ("device", "dtype", "has_mask", "gqa", "softcap", "expected"),
    [
        ("cuda", BF16, False, True, False, "sdpa_gqa"),  # flash takes enable_gqa
        ("cuda", FP16, False, True, False, "sdpa_gqa"),
        ("cuda", BF16, True, True, False, "sdpa_expand"),  # mask: mem-efficient, no GQA
        ("cuda", FP32, False, True, False, "sdpa_expand"),  # fp32: no flash
        ("cuda", FP32, True, True, False, "sdpa_expand"),
        ("cuda", BF16, True, False, False, "sdpa"),
        ("cuda", BF16, True, True, True, "eager_softcap"),
        ("cpu", FP32, True, True, False, "sdpa_gqa"),  # CPU keeps enable_gqa (NOTES.md 9)
        ("cpu", BF16, False, True, False, "sdpa_gqa"),
        ("cpu", FP32, False, False, False, "sdpa"),
        ("cpu", FP32, False, True, True, "eager_softcap"),
    ],
)
def test_dense_strategy(device, dtype, has_mask, gqa, softcap, expected):
    got = dense_strategy(device, dtype, has_mask=has_mask, gqa=gqa, softcap=softcap)
    assert got == expected


@pytest.mark.parametrize(
    ("device", "dtype", "softcap", "window", "varlen_ok", "flex_ok", "expected"),
    [
        ("cpu", BF16, False, None, False, False, "loop"),
        ("cpu", FP32, False, 64, False, False, "loop"),  # window covers every document
        ("cpu", FP32, False, 8, False, False, "mask"),  # a document outruns the window
        ("cpu", BF16, True, None, False, False, "mask"),  # soft-cap
        ("cpu", BF16, False, None, True, True, "loop"),  # CPU never takes GPU kernels
        ("cuda", BF16, False, None, True, True, "varlen"),
        ("cuda", FP16, False, 8, True, True, "varlen"),  # flash windows
        ("cuda", BF16, True, None, True, True, "flex"),  # soft-cap: score_mod
        ("cuda", FP32, False, None, True, True, "flex"),  # fp32: no flash
        ("cuda", BF16, False, None, False, True, "flex"),
        ("cuda", BF16, False, None, False, False, "loop"),
        ("cuda", BF16, True, None, False, False, "mask"),
    ],
)
def test_document_strategy(device, dtype, softcap, window, varlen_ok, flex_ok, expected):
    got = document_strategy(
        device,
        dtype,
        softcap=softcap,
        window=window,
        max_len=20,
        head_dim=64,
        varlen_ok=varlen_ok,
        flex_ok=flex_ok,
    )
    assert got == expected
    assert (
        document_strategy(
            "cuda",
            BF16,
            softcap=False,
            window=None,
            max_len=20,
            head_dim=512,
            varlen_ok=True,
            flex_ok=False,
        )
        == "loop"
    )  # flash's head_dim limit


def _qkv(h=4, kv=2, t=sum(LENS), hd=8, b=1, seed=0, grad=True, device="cpu", dtype=FP32):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, h, t, hd), (b, kv, t, hd), (b, kv, t, hd)]
    return [torch.randn(*s, generator=gen).to(device, dtype).requires_grad_(grad) for s in shapes]


def _reference_mask(lens, window=None, device="cpu"):
    t = sum(lens)
    doc = [d for d, n in enumerate(lens) for _ in range(n)]
    mask = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            mask[i, j] = doc[i] == doc[j] and 0 <= i - j < (window or t + 1)
    return mask.to(device)


def _reference(q, k, v, mask, scale, softcap=None):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scores = q @ k.transpose(-1, -2) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v


def _grads(out, tensors):
    return torch.autograd.grad(
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), tensors
    )


@pytest.mark.parametrize("masked", [False, True])
def test_dense_strategies_agree(masked, device):
    q, k, v = _qkv(b=2, t=12, device=device)
    mask = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1)) > 0.3
    mask = (mask | torch.eye(12, dtype=torch.bool)).to(device)
    m = mask if masked else None
    causal = torch.ones(12, 12, dtype=torch.bool, device=device).tril()
    ref = _reference(q, k, v, m if masked else causal, 0.3)
    ref_g = _grads(ref, (q, k, v))
    for strategy in ("sdpa_gqa", "sdpa_expand"):
        out = dense_attention(q, k, v, m, scale=0.3, strategy=strategy)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=strategy)
        for g, r in zip(_grads(out, (q, k, v)), ref_g):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, msg=strategy)


@pytest.mark.parametrize(
    ("strategies", "softcap", "window", "kv"),
    [
        (("loop", "mask"), None, None, 2),  # GQA
        (("loop", "mask"), None, None, 4),  # MHA
        (("mask",), 5.0, None, 2),  # Gemma 2 soft-cap
        (("mask",), None, 4, 1),  # sliding window shorter than a document, MQA
        (("mask",), 5.0, 6, 2),
    ],
)
def test_document_kernels_equal_block_causal_reference(strategies, softcap, window, kv, device):
    q, k, v = _qkv(kv=kv, device=device)
    docs = Documents(LENS, device)
    ref = _reference(q, k, v, _reference_mask(LENS, window, device), 0.35, softcap)
    ref_g = _grads(ref, (q, k, v))
    for strategy in strategies:
        out = document_attention(
            q, k, v, docs, scale=0.35, softcap=softcap, window=window, strategy=strategy
        )
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=strategy)
        for g, r in zip(_grads(out, (q, k, v)), ref_g):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, msg=strategy)
    # flex (CUDA's kernel for soft-cap / fp32) runs forward-only on CPU, eagerly
    if device.type == "cpu":
        q, k, v = (t.detach() for t in (q, k, v))
    flex = document_attention(
        q, k, v, docs, scale=0.35, softcap=softcap, window=window, strategy="flex"
    )
    torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)
    if q.requires_grad:
        for g, r in zip(_grads(flex, (q, k, v)), ref_g):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg="flex")


@pytest.mark.parametrize("window", [None, 6])
def test_cuda_default_document_kernel_equals_loop(device, window):
    """On a GPU (``TUNESMITH_TEST_DEVICE=cuda``): the default kernel (varlen, bf16) and the
    flex kernel equal the block-causal reference, values and gradients."""
    if device.type != "cuda":
        pytest.skip("needs TUNESMITH_TEST_DEVICE=cuda")
    lens = [130, 7, 300, 64]
    q, k, v = _qkv(h=8, kv=2, t=sum(lens), hd=64, device=device, dtype=BF16)
    docs = Documents(lens, device)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = _reference(qf, kf, vf, _reference_mask(lens, window, device), 0.125)
    ref_g = _grads(ref, (qf, kf, vf))
    for strategy in (None, "flex"):
        out = document_attention(q, k, v, docs, scale=0.125, window=window, strategy=strategy)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
        for g, r in zip(_grads(out, (q, k, v)), ref_g):
            torch.testing.assert_close(g.float(), r, atol=5e-2, rtol=5e-2)


def _fake_varlen_attn(calls):
    """``varlen_attn`` as documented (per sequence of ``cu_seq``; window ``(left, right)``:
    key j visible from query i iff ``i - left <= j <= i + right``, -1 = unbounded), written
    with plain tensor ops so CPU can check what tunesmith passes to the CUDA kernel."""

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size, enable_gqa):
        calls.append((tuple(q.shape), cu_q.tolist(), max_q, window_size, enable_gqa, cu_q.dtype))
        assert cu_k is cu_q and max_q == max_k
        left, right = window_size
        outs = []
        bounds = cu_q.tolist()
        for a, b in zip(bounds, bounds[1:]):
            qi, ki, vi = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [h, n, hd]
            g = qi.shape[0] // ki.shape[0]
            ki, vi = ki.repeat_interleave(g, 0), vi.repeat_interleave(g, 0)
            i = torch.arange(b - a)[:, None]
            j = torch.arange(b - a)[None, :]
            ok = torch.ones(b - a, b - a, dtype=torch.bool)
            if left >= 0:
                ok &= j >= i - left
            if right >= 0:
                ok &= j <= i + right
            s = (qi @ ki.transpose(-1, -2) * scale).masked_fill(~ok, float("-inf"))
            outs.append((torch.softmax(s, -1) @ vi).transpose(0, 1))
        return torch.cat(outs)

    return varlen_attn


@pytest.mark.parametrize("window", [None, 4])
def test_varlen_call_equals_reference(monkeypatch, window):
    import torch.nn.attention.varlen as varlen

    calls: list = []
    monkeypatch.setattr(varlen, "varlen_attn", _fake_varlen_attn(calls))
    q, k, v = _qkv()
    docs = Documents(LENS, "cpu")
    out = document_attention(q, k, v, docs, scale=0.35, window=window, strategy="varlen")
    ref = _reference(q, k, v, _reference_mask(LENS, window), 0.35)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    shape, cu, max_len, window_size, gqa, dtype = calls[0]
    assert shape == (sum(LENS), 4, 8) and cu == [0, 5, 22, 23, 32] and max_len == 17
    assert window_size == ((-1, 0) if window is None else (window - 1, 0)) and gqa
    assert dtype == torch.int32 and len(calls) == 1  # one call for all documents


def test_documents_share_derived_tensors():
    docs = Documents([3, 2], "cpu")
    assert docs.cu_seqlens().tolist() == [0, 3, 5] and docs.cu_seqlens() is docs.cu_seqlens()
    assert docs.document_ids().tolist() == [0, 0, 0, 1, 1]
    assert docs.dense_mask(None) is docs.dense_mask(9)  # a window past every document: none
    assert docs.dense_mask(None).shape == (1, 1, 5, 5)


def test_default_strategy_on_cpu_is_the_loop(monkeypatch):
    called = []
    monkeypatch.setattr(ak, "_loop", lambda *a: called.append(1) or a[0])
    q, k, v = _qkv(grad=False)
    document_attention(q, k, v, Documents(LENS, "cpu"), scale=1.0)
    assert called == [1]
    with pytest.raises(ValueError, match="sum\\(seq_lens\\)"):
        document_attention(q, k, v, Documents([3], "cpu"), scale=1.0)


def test_gemma_embed_scale_needs_no_tensor_per_forward(monkeypatch):
    from tunesmith.models import build_decoder
    from tunesmith.models.spec import ModelSpec
    from tunesmith.modules import transformer

    spec = ModelSpec(
        family="GEMMA", vocab_size=50, num_layers=1, num_heads=2, num_kv_heads=1,
        embed_dim=16, intermediate_dim=32, max_seq_len=32, embed_scale=True,
    )  # fmt: skip
    model = build_decoder(spec).to(torch.bfloat16)
    tokens = torch.randint(0, 50, (1, 7))
    h = model.tok_embeddings(tokens)
    expected = h * torch.tensor(16**0.5, dtype=torch.bfloat16)  # the old per-forward tensor
    assert torch.equal(h * model._embed_scale_for(torch.bfloat16), expected)
    real = torch.tensor
    calls = []
    monkeypatch.setattr(
        transformer.torch, "tensor", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    model(tokens)
    assert calls == []
