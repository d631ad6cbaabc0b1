"""The pieces of one PPO step: rollouts into a torchtune ``Trajectory``, advantages whitened
over every rank, the clipped-loss optimisation pass, and the step's metrics.

Shapes: ``B`` this rank's rollout batch, ``P`` prompt width (left-padded), ``n`` response
width (``max_generated_tokens``: generation never stops early, so every rank runs the same
number of forwards under FSDP2, as torchtune's recipe generated), ``s = P + n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.generation import generate
from tunesmith.generation._generate import left_pad_prompts
from tunesmith.modules.masks import padded_attention_inputs
from tunesmith.recipes._rl_loop import rollout_seed
from tunesmith.rlhf.ppo import (
    PPOLoss,
    Trajectory,
    estimate_advantages,
    get_reward_penalty_mask,
    get_rewards_ppo,
    get_unmasked_sequence_lengths,
    logits_to_logprobs,
    masked_mean,
    truncate_sequence_at_first_stop_token,
)
from tunesmith.rlhf.rl_metrics import token_entropy
from tunesmith.training.distributed import reduce_metrics

__all__ = ["PPOSettings", "make_trajectory", "advantages_and_returns", "ppo_minibatch",
           "STEP_METRICS"]  # fmt: skip


@dataclass(frozen=True)
class PPOSettings:
    """The recipe's PPO knobs (torchtune's config keys)."""

    batch_size: int
    forward_batch_size: int
    ppo_epochs: int
    ppo_batch_size: int
    accum: int
    temperature: float
    top_k: int | None
    max_generated_tokens: int
    min_response_length: int | None
    penalise_no_eos: bool
    reward_penalty: float
    kl_coeff: float
    gamma: float
    lmbda: float
    whiten_rewards: bool
    enable_kv_cache: bool
    pad_id: int
    stop_token_ids: tuple[int, ...]


def _logits(model: nn.Module, traj: Trajectory, p: int) -> torch.Tensor:
    """``[b, n, v|1]`` outputs at the positions that predict (score) the response tokens."""
    out = model(traj.query_responses, mask=traj.masks, input_pos=traj.position_ids)
    return out[:, p - 1 : -1]


@torch.no_grad()
def make_trajectory(
    prompts: Sequence[Sequence[int]],
    policy: nn.Module,
    reference: nn.Module,
    value: nn.Module,
    reward: nn.Module,
    s: PPOSettings,
    *,
    seed: int,
    step: int,
    device: torch.device,
) -> tuple[Trajectory, int]:
    """Sample responses for this rank's ``prompts`` (``forward_batch_size`` at a time), score
    them and build torchtune's ``Trajectory`` (its masking, penalties and value indices).

    Each chunk samples from the RL loop's rollout RNG (``_rl_loop.rollout_seed``: the run's
    seed, the PPO step and the chunk's prompts only), so a resumed run samples what the
    interrupted one would have, and (with ``forward_batch_size=1``) N ranks sample what one
    process does. Returns ``(trajectory, P)``.
    """
    chunks = []
    rng = torch.Generator(device=device)
    for start in range(0, len(prompts), s.forward_batch_size):
        rows = prompts[start : start + s.forward_batch_size]
        rng.manual_seed(rollout_seed(seed, step, rows))
        out = generate(
            policy,
            left_pad_prompts(rows, s.pad_id).to(device),
            s.max_generated_tokens,
            temperature=s.temperature,
            top_k=s.top_k,
            pad_id=s.pad_id,
            rng=rng,
            use_cache=s.enable_kv_cache,
        )
        assert isinstance(out, torch.Tensor)
        chunks.append(out)
    n = s.max_generated_tokens
    width = max(c.shape[1] for c in chunks)
    tokens = torch.cat([F.pad(c, (width - c.shape[1], 0), value=s.pad_id) for c in chunks])
    p = width - n
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[:, :p] = tokens[:, :p] != s.pad_id
    masks, positions = padded_attention_inputs(valid)
    responses = tokens[:, p:].clone()
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref": [], "values": []}
    b = tokens.shape[0]
    for start in range(0, b, s.forward_batch_size):
        sub = slice(start, start + s.forward_batch_size)
        view = Trajectory(tokens[sub], *([None] * 3), masks[sub], positions[sub], *([None] * 5))
        parts["logprobs"].append(
            logits_to_logprobs(_logits(policy, view, p).float(), responses[sub], s.temperature)
        )
        parts["ref"].append(
            logits_to_logprobs(_logits(reference, view, p).float(), responses[sub], s.temperature)
        )
        parts["values"].append(_logits(value, view, p).float().squeeze(-1))
    logprobs, ref_logprobs, values = (torch.cat(v) for v in parts.values())
    stops = torch.tensor(s.stop_token_ids, dtype=torch.long, device=device)
    padding, responses = truncate_sequence_at_first_stop_token(responses, stops, s.pad_id)
    seq_lens = get_unmasked_sequence_lengths(padding)
    truncated = torch.cat([tokens[:, :p], responses], dim=1)
    scores = torch.cat(
        [
            reward(truncated[sub], mask=masks[sub], input_pos=positions[sub]).float()
            for sub in (
                slice(i, i + s.forward_batch_size) for i in range(0, b, s.forward_batch_size)
            )
        ]
    )
    scores = scores.gather(1, (seq_lens + p)[:, None, None]).squeeze(-1).squeeze(-1)
    if s.penalise_no_eos or s.min_response_length:
        penalty = get_reward_penalty_mask(
            padding, seq_lens, s.penalise_no_eos, s.min_response_length
        )
        scores = torch.where(penalty, torch.full_like(scores, s.reward_penalty), scores)
    logprobs = logprobs.masked_fill(padding, 1.0)
    ref_logprobs = ref_logprobs.masked_fill(padding, 1.0)
    value_idx = torch.where((seq_lens > 0) & (seq_lens < n - 1), seq_lens + 1, seq_lens)
    value_padding = padding.clone().scatter_(1, value_idx[:, None], False)
    values = values.masked_fill(value_padding, 0.0)
    traj = Trajectory(tokens, logprobs, ref_logprobs, values, masks, positions, padding,
                      value_padding, value_idx, scores, seq_lens)  # fmt: skip
    return traj, p


def _whiten_all_ranks(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool) -> torch.Tensor:
    """``tunesmith.rlhf.ppo.whiten`` with the masked mean and unbiased variance over every
    rank's rows (the same formula and epsilons, so one process gets torchtune's numbers)."""
    m = mask.to(x.dtype)
    (first,) = reduce_metrics(torch.stack([(x * m).sum(), m.sum()]).double())
    count = first[1]
    mean = (first[0] / (count + 1e-8)).to(x.dtype)
    (sq,) = reduce_metrics(((x - mean).pow(2) * m).sum().double().reshape(1))
    var = sq[0] / (count + 1e-8) * (count / (count + 1e-8 - 1))
    out = (x - mean) * torch.rsqrt(var.to(x.dtype) + 1e-8)
    return out + mean if shift_mean else out


@torch.no_grad()
def advantages_and_returns(
    traj: Trajectory, s: PPOSettings, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(advantages, returns, kl, kl_rewards)``, each ``[B, n]``: KL-shaped rewards (the score
    at ``value_seq_idxs``), GAE, advantages whitened over the whole batch of every rank."""
    rewards, kl, kl_rewards = get_rewards_ppo(
        traj.scores, traj.logprobs, traj.ref_logprobs, s.kl_coeff, traj.value_seq_idxs
    )
    mask = ~traj.response_padding_masks
    if s.whiten_rewards:
        rewards = _whiten_all_ranks(rewards, mask, shift_mean=False)
    advantages, returns = estimate_advantages(traj.values, rewards, s.gamma, s.lmbda, masks=mask)
    if world_size > 1:  # torchtune whitens over the local batch; here over the global one
        advantages = _whiten_all_ranks(returns - traj.values, mask, shift_mean=True)
        advantages = advantages.masked_fill(~mask, 0.0)
    return advantages, returns, kl, kl_rewards


STEP_METRICS = ("loss", "policy_loss", "value_loss", "ratios", "clipfrac", "value_clipfrac",
                "approx_policy_kl", "entropy")  # fmt: skip
"""Per-optimizer-step metrics :func:`ppo_minibatch` returns (means over the minibatch)."""


def _select(traj: Trajectory, idx: torch.Tensor) -> Trajectory:
    return Trajectory(*(t.index_select(0, idx) for t in traj))


def ppo_minibatch(
    idx: torch.Tensor,
    traj: Trajectory,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    p: int,
    policy: nn.Module,
    value: nn.Module,
    loss_fn: PPOLoss,
    s: PPOSettings,
    world_size: int,
) -> torch.Tensor:
    """Backward of one PPO minibatch (``idx``: its rows), ``gradient_accumulation_steps``
    backward batches at a time. Returns ``STEP_METRICS`` as a float64 tensor.

    Each part of the loss is a token mean over the whole minibatch of every rank (each
    backward batch's masked means, as torchtune's ``PPOLoss`` computes them, are re-weighted
    by the batch's share of the minibatch's tokens): with one process and
    ``gradient_accumulation_steps=1`` this is torchtune's loss exactly, and it does not
    depend on how the minibatch is split into backward batches or processes.
    """
    pol_mask = ~traj.response_padding_masks[idx]
    val_mask = ~traj.value_padding_masks[idx]
    (counts,) = reduce_metrics(torch.stack([pol_mask.sum(), val_mask.sum()]).double())
    total_p, total_v = (float(c) for c in counts.clamp(min=1).tolist())
    sums = torch.zeros(len(STEP_METRICS), dtype=torch.float64, device=advantages.device)
    per = max(1, len(idx) // s.accum)
    for j in range(0, len(idx), per):
        sub = idx[j : j + per]
        bt = _select(traj, sub)
        pm, vm = ~bt.response_padding_masks, ~bt.value_padding_masks
        n_p, n_v = float(pm.sum()), float(vm.sum())
        logits = _logits(policy, bt, p).float()
        pi_logprobs = logits_to_logprobs(logits, bt.query_responses[:, p:], s.temperature)
        pi_logprobs = pi_logprobs.masked_fill(bt.response_padding_masks, 1.0)
        phi_values = _logits(value, bt, p).float().squeeze(-1)
        phi_values = phi_values.masked_fill(bt.value_padding_masks, 0.0)
        w_p, w_v = n_p / total_p * world_size, n_v / total_v * world_size
        if pi_logprobs.requires_grad:
            pi_logprobs.register_hook(lambda g, w=w_p: g * w)
        if phi_values.requires_grad:
            phi_values.register_hook(lambda g, w=w_v: g * w)
        adv, ret = advantages[sub], returns[sub]
        loss, policy_loss, value_loss, ratios, clipfrac = loss_fn(
            bt.logprobs, pi_logprobs, adv, bt.values, phi_values, ret,
            padding_masks=pm, value_padding_masks=vm,
        )  # fmt: skip
        loss.backward()
        with torch.no_grad():
            c = loss_fn.value_clip_range
            clipped = torch.clamp(phi_values, bt.values - c, bt.values + c)
            v_clip = ((clipped - ret) ** 2 > (phi_values - ret) ** 2).float()
            approx_kl = masked_mean(0.5 * (pi_logprobs - bt.logprobs).pow(2), pm)
            entropy = masked_mean(token_entropy(logits.detach(), s.temperature), pm)
            wp, wv = n_p / total_p, n_v / total_v  # token-weighted means over the minibatch
            values = [loss.detach() * wp, policy_loss * wp, value_loss * wv, ratios * wp,
                      clipfrac * wp, masked_mean(v_clip, vm) * wv, approx_kl * wp,
                      entropy * wp]  # fmt: skip
            sums += torch.stack([v.double() for v in values])
    return sums
