"""Rollouts: sampled tokens, masks and log-probs equal a separate forward pass and no-cache
generation; padding, grouping and sampling filters behave."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import ConfigError
from tunesmith.generation import generate
from tunesmith.models import build_decoder
from tunesmith.models.builder import lora_settings
from tunesmith.models.spec import ModelSpec
from tunesmith.rlhf.rollout import (
    LocalRolloutEngine,
    Rollout,
    RolloutEngine,
    SamplingParams,
    response_logprobs,
)

VOCAB = 96
PROMPTS = [[5, 17, 42, 8, 77, 3], [9, 4], [60, 61, 62]]


def _spec(**extra) -> ModelSpec:
    base = dict(family="LLAMA3", vocab_size=VOCAB, num_layers=2, num_heads=4, num_kv_heads=2,
                embed_dim=32, intermediate_dim=64, max_seq_len=64)  # fmt: skip
    return ModelSpec(**{**base, **extra})


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_decoder(_spec()).eval()


def _reference_logprobs(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Each row alone, unpadded, full logits: log_softmax(logits / T) at the sampled tokens."""
    out = torch.zeros_like(rollout.logprobs)
    for i in range(len(rollout)):
        prompt = rollout.prompt_tokens[i][rollout.prompt_mask[i]]
        response = rollout.response_tokens[i][rollout.response_mask[i]]
        seq = torch.cat([prompt, response])[None]
        with torch.no_grad():
            logits = model(seq)[0, len(prompt) - 1 : -1].double() / temperature
        lp = torch.log_softmax(logits, -1).gather(-1, response[:, None]).squeeze(-1)
        out[i, : len(response)] = lp.float()
    return out


def _stop_token(model) -> int:
    """A token the model emits early for PROMPTS[0] greedily (so stop tokens really stop)."""
    free = generate(model, torch.tensor([PROMPTS[0]]), 4)
    return int(free[0, len(PROMPTS[0]) + 1])


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_rollout_logprobs_equal_forward_pass(model, temperature) -> None:
    engine = LocalRolloutEngine(model, pad_id=0)
    assert isinstance(engine, RolloutEngine)
    params = SamplingParams(max_new_tokens=10, temperature=temperature,
                            stop_tokens=(_stop_token(model),))  # fmt: skip
    rollout = engine.generate(PROMPTS, params, num_samples=2, rng=torch.Generator().manual_seed(3))
    t = params.logprob_temperature
    ref = _reference_logprobs(model, rollout, t)
    assert (rollout.logprobs - ref).abs().max() <= 1e-5
    assert (rollout.logprobs[~rollout.response_mask] == 0).all()
    policy, entropy = response_logprobs(model, rollout, temperature=t, return_entropy=True)
    assert policy.dtype == torch.float32 and policy.shape == rollout.response_tokens.shape
    assert (policy - ref).abs().max() <= 1e-5
    assert (policy - rollout.logprobs).abs().max() <= 1e-5
    # entropy of the same distributions, from full logits
    seq = rollout.tokens
    mask, pos = rollout.attention_inputs()
    with torch.no_grad():
        logits = model(seq, mask=mask, input_pos=pos)[:, rollout.prompt_tokens.shape[1] - 1 : -1]
    logp = torch.log_softmax(logits.double() / t, -1)
    ref_entropy = (-(logp.exp() * logp).sum(-1) * rollout.response_mask).float()
    assert (entropy - ref_entropy).abs().max() <= 1e-5
    # the full-logits path (FSDP2) gives the same numbers
    full = response_logprobs(model, rollout, temperature=t, from_hidden=False)
    assert (full - policy).abs().max() <= 1e-5


def test_response_logprobs_gradient_flows_lora() -> None:
    torch.manual_seed(1)
    lora = build_decoder(_spec(), lora_settings(["q_proj", "v_proj"], apply_lora_to_output=True))
    for name, p in lora.named_parameters():
        p.requires_grad_("lora" in name)
        if "lora_b" in name:
            torch.nn.init.normal_(p, std=0.02)  # adapters that change the output
    rollout = LocalRolloutEngine(lora, pad_id=0).generate(
        PROMPTS, SamplingParams(max_new_tokens=6), rng=torch.Generator().manual_seed(0)
    )
    lp = response_logprobs(lora, rollout)
    assert (lp - rollout.logprobs).abs().max() <= 1e-5
    assert not lora.skip_output_layer  # restored
    lp.sum().backward()
    params = [p for n, p in lora.named_parameters() if "lora" in n]
    grads = [p.grad.clone() for p in params]
    assert all(g.abs().sum() > 0 for g in grads)
    # chunked projection (recomputed in backward) gives the same values and gradients
    for p in params:
        p.grad = None
    chunked = response_logprobs(lora, rollout, chunk_size=3)
    assert (chunked - lp).abs().max() <= 1e-6
    chunked.sum().backward()
    for p, g in zip(params, grads):
        assert (p.grad - g).abs().max() <= 1e-5


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_equals_no_cache(model, temperature) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=temperature, top_k=20, top_p=0.9)
    runs = []
    for use_cache in (True, False):
        engine = LocalRolloutEngine(model, pad_id=0, use_cache=use_cache)
        runs.append(engine.generate(PROMPTS, params, num_samples=2,
                                    rng=torch.Generator().manual_seed(7)))  # fmt: skip
    cached, plain = runs
    assert torch.equal(cached.response_tokens, plain.response_tokens)
    assert torch.equal(cached.response_mask, plain.response_mask)
    assert (cached.logprobs - plain.logprobs).abs().max() <= 1e-5
    assert not model.caches_are_enabled()


def test_stop_tokens_masks_and_truncated(model) -> None:
    stop = _stop_token(model)
    rollout = LocalRolloutEngine(model, pad_id=0).generate(
        PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0, stop_tokens=(stop,))
    )
    free = LocalRolloutEngine(model, pad_id=0).generate(
        PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0)
    )
    assert free.truncated.all() and free.response_mask.all()  # no stop tokens: all truncated
    assert free.response_tokens.shape[1] == 8
    for i in range(len(PROMPTS)):
        row = free.response_tokens[i].tolist()
        if stop in row:
            cut = row.index(stop)
            assert not rollout.truncated[i]
            assert (
                rollout.response_mask[i].tolist()
                == [j <= cut for j in range(len(row))][: rollout.response_tokens.shape[1]]
            )
            assert rollout.response_tokens[i, : cut + 1].tolist() == row[: cut + 1]
            assert (rollout.response_tokens[i, cut + 1 :] == 0).all()
            assert int(rollout.response_lengths()[i]) == cut + 1
        else:
            assert rollout.truncated[i] and rollout.response_mask[i].all()
    assert not rollout.truncated[0]
    seq_mask = rollout.mask
    assert seq_mask.shape == rollout.tokens.shape
    assert torch.equal(seq_mask[:, : rollout.prompt_tokens.shape[1]], rollout.prompt_mask)


def test_pad_id_that_is_a_real_token(model) -> None:
    """Masks come from lengths, so a prompt holding the pad id still generates as alone."""
    prompts = [[7, 0, 8, 9], [0, 5]]
    params = SamplingParams(max_new_tokens=5, temperature=0.0)
    batch = LocalRolloutEngine(model, pad_id=0).generate(prompts, params)
    for i, p in enumerate(prompts):
        alone = LocalRolloutEngine(model, pad_id=0).generate([p], params)
        assert batch.response_tokens[i].tolist() == alone.response_tokens[0].tolist()
        assert int(batch.prompt_mask[i].sum()) == len(p)


@pytest.mark.parametrize("batch_size", [None, 1, 2])
def test_left_padded_prompts_equal_each_alone(model, batch_size) -> None:
    params = SamplingParams(max_new_tokens=8, temperature=0.0, stop_tokens=(_stop_token(model),))
    engine = LocalRolloutEngine(model, pad_id=0, batch_size=batch_size)
    batch = engine.generate(PROMPTS, params)
    assert batch.prompt_tokens.shape == (3, 6)
    assert batch.prompt_mask.sum(-1).tolist() == [len(p) for p in PROMPTS]
    for i, p in enumerate(PROMPTS):
        alone = LocalRolloutEngine(model, pad_id=0).generate([p], params)
        n = alone.response_tokens.shape[1]
        assert batch.response_tokens[i, :n].tolist() == alone.response_tokens[0].tolist()
        assert batch.response_mask[i].sum() == alone.response_mask[0].sum()
        assert (batch.logprobs[i, :n] - alone.logprobs[0]).abs().max() <= 1e-5
        assert batch.truncated[i] == alone.truncated[0]


def test_num_samples_grouping_and_select(model) -> None:
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    rollout = LocalRolloutEngine(model, pad_id=0).generate(
        PROMPTS, params, num_samples=4, rng=torch.Generator().manual_seed(0)
    )
    assert len(rollout) == 12
    assert rollout.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for i in range(12):
        p = PROMPTS[int(rollout.prompt_index[i])]
        assert rollout.prompt_tokens[i][rollout.prompt_mask[i]].tolist() == p
    # samples of one prompt differ (sampling at T=1 over 96 tokens)
    assert len({tuple(r) for r in rollout.response_tokens[:4].tolist()}) > 1
    part = rollout.select(torch.tensor([1, 5]))
    assert len(part) == 2 and part.pad_id == 0
    assert torch.equal(part.response_tokens, rollout.response_tokens[[1, 5]])
    assert torch.equal(part.logprobs, rollout.logprobs[[1, 5]])
    # the same seed gives the same rollout
    again = LocalRolloutEngine(model, pad_id=0).generate(
        PROMPTS, params, num_samples=4, rng=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.response_tokens, rollout.response_tokens)


def test_sampling_filters_are_honoured(model) -> None:
    """top-k=1 and a tiny top-p are greedy; a temperature near 0 is greedy; T changes samples."""
    greedy = LocalRolloutEngine(model, pad_id=0).generate(
        PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.0)
    )
    for params in (
        SamplingParams(max_new_tokens=6, temperature=1.0, top_k=1),
        SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1e-6),
    ):
        out = LocalRolloutEngine(model, pad_id=0).generate(
            PROMPTS, params, rng=torch.Generator().manual_seed(0)
        )
        assert torch.equal(out.response_tokens, greedy.response_tokens)
    # top-k=3: every sampled token is among the 3 most likely at its position
    rollout = LocalRolloutEngine(model, pad_id=0).generate(
        PROMPTS, SamplingParams(max_new_tokens=6, top_k=3), num_samples=8,
        rng=torch.Generator().manual_seed(1),
    )  # fmt: skip
    mask, pos = rollout.attention_inputs()
    with torch.no_grad():
        logits = model(rollout.tokens, mask=mask, input_pos=pos)
    logits = logits[:, rollout.prompt_tokens.shape[1] - 1 : -1]
    top3 = logits.topk(3, dim=-1).indices
    hit = (top3 == rollout.response_tokens[..., None]).any(-1)
    assert hit[rollout.response_mask].all()
    # low temperature concentrates samples: fewer distinct first tokens than high temperature
    firsts = {}
    for t in (0.05, 5.0):
        r = LocalRolloutEngine(model, pad_id=0).generate(
            [PROMPTS[0]], SamplingParams(max_new_tokens=1, temperature=t), num_samples=64,
            rng=torch.Generator().manual_seed(2),
        )  # fmt: skip
        firsts[t] = len(set(r.response_tokens[:, 0].tolist()))
    assert firsts[0.05] < firsts[5.0]


def test_prompt_longer_than_context_is_a_clear_error(model) -> None:
    engine = LocalRolloutEngine(model, pad_id=0)
    with pytest.raises(ConfigError, match=r"prompt 1 has 60 tokens.*context of 64"):
        engine.generate([[1, 2], [3] * 60], SamplingParams(max_new_tokens=8))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
