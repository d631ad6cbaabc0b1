"""Generation: KV-cached decoding equals full recomputation and Hugging Face's greedy decoding."""

from __future__ import annotations

import pytest
import torch

from tunesmith.generation import generate, left_pad_prompts, sample_next_token
from tunesmith.models import build_decoder, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native

transformers = pytest.importorskip("transformers")


def _tiny_hf_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models(device) -> tuple[torch.nn.Module, transformers.LlamaForCausalLM]:
    hf = _tiny_hf_llama()
    config = hf.config.to_dict()
    model = build_decoder(spec_from_hf_config(config))
    model.load_state_dict(hf_to_native(hf.state_dict(), "LLAMA3", config))
    return model.eval().to(device), hf.to(device)


def test_kv_cache_equals_recompute(models, device) -> None:
    model, _ = models
    prompt = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(1)).to(device)
    cached = generate(model, prompt, 12, use_cache=True, return_logits=True)
    full = generate(model, prompt, 12, use_cache=False, return_logits=True)
    assert torch.equal(cached.tokens, full.tokens)
    assert (cached.logits - full.logits).abs().max() <= 1e-5
    assert not model.caches_are_enabled()  # generation leaves the model ready for training


def test_greedy_matches_transformers(models, device) -> None:
    model, hf = models
    prompt = torch.tensor([[5, 17, 42, 8, 77, 3]], device=device)
    ours = generate(model, prompt, 10, temperature=0.0)
    ref = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert ours.tolist() == ref.tolist()


def test_left_padded_batch_equals_single_prompts(models, device) -> None:
    model, _ = models
    prompts = [[5, 17, 42, 8, 77, 3], [9, 4], [60, 61, 62]]
    batch = left_pad_prompts(prompts, pad_id=0).to(device)
    out = generate(model, batch, 8, pad_id=0, return_logits=True)
    for row, p in enumerate(prompts):
        alone = generate(model, torch.tensor([p], device=device), 8, return_logits=True)
        assert out.tokens[row, batch.shape[1] :].tolist() == alone.tokens[0, len(p) :].tolist()
        assert (out.logits[row] - alone.logits[0]).abs().max() <= 1e-4


def test_stop_tokens_pad_finished_rows(models, device) -> None:
    model, _ = models
    prompt = torch.tensor([[5, 17, 42], [9, 4, 11]], device=device)
    free = generate(model, prompt, 6)
    stop = int(free[0, 4])  # the second token row 0 generates
    out = generate(model, prompt, 6, stop_tokens=[stop], pad_id=0)
    row0 = out[0, 3:].tolist()
    cut = row0.index(stop)
    assert all(t == 0 for t in row0[cut + 1 :])
    assert out[0, : 3 + cut + 1].tolist() == free[0, : 3 + cut + 1].tolist()


def test_streaming_callback_sees_every_token(models, device) -> None:
    model, _ = models
    seen: list[int] = []
    out = generate(
        model,
        torch.tensor([[1, 2, 3]], device=device),
        5,
        on_token=lambda t: seen.append(int(t[0])),
    )
    assert seen == out[0, 3:].tolist()


def test_sampling_filters(device) -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 10.0]], device=device)
    assert sample_next_token(logits, temperature=0.0).tolist() == [4]
    rng = torch.Generator(device).manual_seed(0)
    draws = {int(sample_next_token(logits, temperature=5.0, top_k=2, rng=rng)) for _ in range(200)}
    assert draws == {3, 4}
    # top_p: token 4 alone holds > 99% of the mass
    draws = {int(sample_next_token(logits, temperature=1.0, top_p=0.5, rng=rng)) for _ in range(50)}
    assert draws == {4}
    flat = torch.zeros(1, 4, device=device)
    draws = {int(sample_next_token(flat, temperature=1.0, top_p=0.6, rng=rng)) for _ in range(300)}
    assert len(draws) == 3  # 0.25 + 0.25 < 0.6 <= 0.75: three tokens survive


@pytest.mark.parametrize(
    "extra",
    [
        # Gemma 2 style: softcaps, alternating sliding-window layers, post-norms, scaled embeddings
        dict(family="GEMMA2", attn_softcap=50.0, final_softcap=30.0, sliding_window=4,
             layer_types=("sliding_attention", "full_attention"), post_norms=True, embed_scale=True,
             norm_offset=True, activation="gelu_tanh", query_pre_attn_scalar=16.0, tie_embeddings=True),
        # Qwen 3 style: QK-norm; Qwen 2 style: qkv bias
        dict(family="QWEN3", qk_norm=True, head_dim=16),
        dict(family="QWEN2", qkv_bias=True),
    ],
    ids=["gemma2", "qwen3", "qwen2"],
)  # fmt: skip
def test_kv_cache_equals_recompute_across_architectures(extra: dict, device) -> None:
    from tunesmith.models.spec import ModelSpec

    torch.manual_seed(0)
    base = dict(vocab_size=96, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                intermediate_dim=128, max_seq_len=128)  # fmt: skip
    model = build_decoder(ModelSpec(**{**base, **extra})).eval().to(device)
    prompts = left_pad_prompts([[5, 17, 42, 8, 77, 3, 9], [4, 4, 60]], pad_id=0).to(device)
    cached = generate(model, prompts, 10, use_cache=True, return_logits=True)
    full = generate(model, prompts, 10, use_cache=False, return_logits=True)
    assert torch.equal(cached.tokens, full.tokens)
    assert (cached.logits - full.logits).abs().max() <= 1e-5
