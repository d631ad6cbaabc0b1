"""TransformerDecoder: KV-cached decoding, packed documents, chunked/hidden outputs, tying."""

from __future__ import annotations

import pytest
import torch

from tunesmith.models import build_decoder
from tunesmith.models.spec import ModelSpec, RopeScaling, alternating_sliding
from tunesmith.modules import packed_causal_mask, padding_to_causal_mask

BASE = dict(
    family="LLAMA3",
    vocab_size=101,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=32,
    intermediate_dim=48,
    max_seq_len=128,
)
SPECS = {
    "llama31_tied": ModelSpec(
        **BASE, tie_embeddings=True, rope_scaling=RopeScaling(original_max_position_embeddings=16)
    ),
    "gemma2_like": ModelSpec(
        **{**BASE, "family": "GEMMA2"},
        head_dim=16,
        norm_offset=True,
        activation="gelu_tanh",
        tie_embeddings=True,
        embed_scale=True,
        attn_softcap=5.0,
        final_softcap=3.0,
        query_pre_attn_scalar=24,
        sliding_window=6,
        layer_types=alternating_sliding(4),
        post_norms=True,
    ),
    "qwen3_like": ModelSpec(**{**BASE, "family": "QWEN3"}, head_dim=16, qk_norm=True),
    "mistral_window": ModelSpec(**{**BASE, "family": "MISTRAL"}, sliding_window=5),
}


def _model(name: str, device: torch.device | str = "cpu"):
    torch.manual_seed(0)
    model = build_decoder(SPECS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.to(device)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_kv_cached_decoding_equals_full_forward(name, device):
    model = _model(name, device)
    tokens = torch.randint(0, 101, (2, 20)).to(device)
    with torch.no_grad():
        full = model(tokens)
        model.setup_caches(batch_size=2, dtype=torch.float32, max_seq_len=32)
        assert model.caches_are_enabled()
        for _ in range(2):  # the second pass checks reset_caches()
            model.reset_caches()
            steps = [model(tokens[:, :8])]
            steps += [model(tokens[:, i : i + 1]) for i in range(8, 20)]
            torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
        model.remove_caches()
        assert not model.caches_are_enabled()
        torch.testing.assert_close(model(tokens), full, atol=0, rtol=0)


def test_kv_cache_with_left_padding_and_explicit_masks(device):
    model = _model("mistral_window", device)
    tokens = torch.randint(1, 101, (2, 14)).to(device)
    valid = torch.ones(2, 14, dtype=torch.bool, device=device)
    valid[1, :4] = False
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
    mask = padding_to_causal_mask(valid)
    with torch.no_grad():
        full = model(tokens, mask=mask, input_pos=pos)
        model.setup_caches(2, torch.float32, 14)
        out = [model(tokens[:, :9], mask=mask[:, :9], input_pos=pos[:, :9])]
        for i in range(9, 14):
            # odd steps pass torchtune's one-position-per-row [b] input_pos
            step_pos = pos[:, i] if i % 2 else pos[:, i : i + 1]
            out.append(model(tokens[:, i : i + 1], mask=mask[:, i : i + 1], input_pos=step_pos))
    torch.testing.assert_close(torch.cat(out, 1)[valid], full[valid], atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="overflow"):
        model(tokens[:, :1])
    with pytest.raises(AssertionError, match="overflow"):  # torchtune's cache asserts
        model(tokens[:, :1])


@pytest.mark.parametrize("name", ["llama31_tied", "gemma2_like"])
def test_packed_documents_equal_separate_runs(name, device):
    model = _model(name, device)
    a, b = torch.randint(0, 101, (1, 9)).to(device), torch.randint(0, 101, (1, 13)).to(device)
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 9 + [1] * 13], device=device)
    input_pos = torch.cat([torch.arange(9), torch.arange(13)])[None].to(device)
    with torch.no_grad():
        out = model(packed, mask=packed_causal_mask(doc_ids), input_pos=input_pos)
        torch.testing.assert_close(out[:, :9], model(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[:, 9:], model(b), atol=1e-5, rtol=0)


def test_chunked_output_hidden_states_and_tied_weights(device):
    model = _model("llama31_tied", device)
    tokens = torch.randint(0, 101, (2, 17)).to(device)
    with torch.no_grad():
        logits = model(tokens)
        model.set_num_output_chunks(4)
        chunks = model(tokens)
        assert isinstance(chunks, list) and len(chunks) == 4
        torch.testing.assert_close(torch.cat(chunks, 1), logits, atol=1e-6, rtol=0)
        model.set_num_output_chunks(0)
        model.skip_output_layer = True
        hidden = model(tokens)
        assert hidden.shape == (2, 17, 32)
        torch.testing.assert_close(model.output(hidden), logits, atol=1e-6, rtol=0)
    assert model.output.weight is model.tok_embeddings.weight
    assert "output.weight" not in model.state_dict()
    assert model.tie_word_embeddings


def test_gemma2_final_softcap_bounds_logits(device):
    model = _model("gemma2_like", device)
    with torch.no_grad():
        logits = model(torch.randint(0, 101, (1, 10)).to(device))
    assert logits.abs().max() < 3.0 and model.final_logit_softcap == 3.0


def test_kv_cache_errors_are_also_torchtune_types() -> None:
    from tunesmith.modules import KVCache

    cache = KVCache(batch_size=2, max_seq_len=4, num_kv_heads=1, head_dim=8, dtype=torch.float32)
    with pytest.raises(ValueError, match="larger than the cache's batch size 2"):
        cache.update(torch.zeros(3, 1, 1, 8), torch.zeros(3, 1, 1, 8))
    cache.update(torch.ones(2, 1, 3, 8), torch.ones(2, 1, 3, 8))
    with pytest.raises(AssertionError, match="overflow: 5 positions > max_seq_len 4"):
        cache.update(torch.zeros(2, 1, 2, 8), torch.zeros(2, 1, 2, 8))
    assert cache.size == 3
