"""RoPE against transformers' Llama rotary embedding (default and Llama 3.1 scaling)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.modules import RopeScaling, RotaryEmbedding, apply_rope

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("theta", [10_000.0, 500_000.0])
def test_rope_matches_transformers(scaled, theta):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    rope_parameters = {"rope_type": "default", "rope_theta": theta}
    scaling = None
    if scaled:
        rope_parameters = {
            "rope_type": "llama3",
            "rope_theta": theta,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        scaling = RopeScaling(8.0, 1.0, 4.0, 64)
    cfg = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=4096,
        rope_parameters=rope_parameters,
    )
    hf_rope = LlamaRotaryEmbedding(cfg)
    q, k = torch.randn(2, 4, 50, 32), torch.randn(2, 4, 50, 32)
    pos = torch.randint(0, 4000, (2, 50))
    cos_ref, sin_ref = hf_rope(q, pos)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    cos, sin = RotaryEmbedding(32, theta, scaling)(pos, torch.float32)
    assert torch.equal(cos[:, 0], cos_ref) and torch.equal(sin[:, 0], sin_ref)
    assert torch.equal(apply_rope(q, cos, sin), q_ref)
    assert torch.equal(apply_rope(k, cos, sin), k_ref)


def test_rope_holds_no_state():
    rope = RotaryEmbedding(16, 10_000.0)
    assert not list(rope.parameters()) and not list(rope.buffers())
