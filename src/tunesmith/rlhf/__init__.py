"""Preference and RL training pieces.

- ``loss``: pairwise preference losses (torchtune's ``torchtune.rlhf.loss.*`` names);
  per-sequence log-probabilities (``get_batch_log_probs``, ``sequence_log_probs``).
- ``rollout``: sampling completions for online RL (``Rollout``, ``RolloutEngine``,
  ``LocalRolloutEngine``) and the policy pass over them (``response_logprobs``).
- ``rewards``: reward functions (rule-based, model-based, torchtune's dev reward classes).
- ``grpo``: group-relative advantages and the GRPO policy-loss variants (TRL's numbers), plus
  torchtune's dev GRPO losses.
- ``ppo``: ``PPOLoss``, GAE, whitening, KL-shaped rewards and the sequence helpers of
  torchtune 0.6.1's ``torchtune.rlhf`` (exported here, so ``torchtune.rlhf.<name>`` resolves).
- ``rl_metrics``: entropy, clip fraction, KL and reward/advantage/length statistics.
- ``rollout``: sampling for online RL (``SamplingParams``, ``Rollout``, ``LocalRolloutEngine``,
  ``response_logprobs``).
"""

from tunesmith.rlhf import loss, rollout
from tunesmith.rlhf._log_probs import get_batch_log_probs, sequence_log_probs, token_log_probs
from tunesmith.rlhf.ppo import (
    ChosenRejectedOutputs,
    PPOLoss,
    PPOStats,
    Trajectory,
    batched_logits_to_logprobs,
    estimate_advantages,
    get_reward_penalty_mask,
    get_rewards_ppo,
    get_unmasked_sequence_lengths,
    logits_to_logprobs,
    masked_mean,
    masked_sum,
    masked_var,
    truncate_sequence_at_first_stop_token,
    truncate_sequence_for_logprobs,
    whiten,
)
from tunesmith.rlhf.rollout import (
    LocalRolloutEngine,
    Rollout,
    RolloutEngine,
    SamplingParams,
    response_logprobs,
)

__all__ = [
    "LocalRolloutEngine",
    "Rollout",
    "RolloutEngine",
    "SamplingParams",
    "response_logprobs",
    "rollout",
    "token_log_probs",
    "ChosenRejectedOutputs",
    "LocalRolloutEngine",
    "PPOLoss",
    "PPOStats",
    "Rollout",
    "RolloutEngine",
    "SamplingParams",
    "Trajectory",
    "batched_logits_to_logprobs",
    "estimate_advantages",
    "get_batch_log_probs",
    "get_reward_penalty_mask",
    "get_rewards_ppo",
    "get_unmasked_sequence_lengths",
    "logits_to_logprobs",
    "loss",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "response_logprobs",
    "rollout",
    "sequence_log_probs",
    "token_log_probs",
    "truncate_sequence_at_first_stop_token",
    "truncate_sequence_for_logprobs",
    "whiten",
]
