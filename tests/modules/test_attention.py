"""Attention against an explicit softmax reference; masks."""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.modules import (
    MultiHeadAttention,
    RotaryEmbedding,
    packed_causal_mask,
    padding_to_causal_mask,
    sliding_window_band,
)


def _attn(softcap=None) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(
        embed_dim=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        q_proj=nn.Linear(32, 32),
        k_proj=nn.Linear(32, 16),
        v_proj=nn.Linear(32, 16),
        output_proj=nn.Linear(32, 32, bias=False),
        softcap=softcap,
    )


def _reference(attn: MultiHeadAttention, x, cos, sin, mask):
    """Textbook GQA attention written out with explicit head repetition."""
    from tunesmith.modules import apply_rope

    b, s, _ = x.shape
    q = attn.q_proj(x).view(b, s, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, 2, 8).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, 2, 8).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    if attn.softcap:
        scores = attn.softcap * torch.tanh(scores / attn.softcap)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return attn.output_proj(out.transpose(1, 2).reshape(b, s, 32))


def test_causal_and_masked_attention_match_reference(device):
    x = torch.randn(2, 11, 32).to(device)
    cos, sin = RotaryEmbedding(8).to(device)(torch.arange(11, device=device), torch.float32)
    causal = torch.ones(11, 11, dtype=torch.bool, device=device).tril()[None].expand(2, -1, -1)
    for softcap in (None, 2.0):
        attn = _attn(softcap).to(device)
        with torch.no_grad():
            ref = _reference(attn, x, cos, sin, causal)
            torch.testing.assert_close(attn(x, cos, sin), ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(attn(x, cos, sin, causal), ref, atol=1e-5, rtol=0)
            docs = packed_causal_mask(torch.tensor([[0] * 4 + [1] * 7, [0] * 11], device=device))
            ref = _reference(attn, x, cos, sin, docs)
            torch.testing.assert_close(attn(x, cos, sin, docs), ref, atol=1e-5, rtol=0)


def test_masks():
    pad = torch.tensor([[False, False, True, True], [True, True, True, True]])
    m = padding_to_causal_mask(pad)
    assert m.shape == (2, 4, 4)
    assert m[0, 3].tolist() == [False, False, True, True]
    assert m[0, 0].tolist() == [True, False, False, False]  # pad rows see themselves: no NaN
    assert m[1].equal(torch.ones(4, 4, dtype=torch.bool).tril())
    docs = packed_causal_mask(torch.tensor([[0, 0, 1, 1, 1]]))
    assert docs[0, 3].tolist() == [False, False, True, True, False]
    band = sliding_window_band(torch.arange(5), torch.arange(5), 2)
    assert band[4].tolist() == [False, False, False, True, True]
