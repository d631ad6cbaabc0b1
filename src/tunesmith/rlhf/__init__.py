"""Preference and RL training pieces: preference losses (``tunesmith.rlhf.loss``, torchtune's
``torchtune.rlhf.loss.*`` names), per-sequence log-probabilities, and rollouts for online RL
(``tunesmith.rlhf.rollout``)."""

from tunesmith.rlhf import loss, rollout
from tunesmith.rlhf._log_probs import get_batch_log_probs, sequence_log_probs, token_log_probs
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
    "get_batch_log_probs",
    "loss",
    "response_logprobs",
    "rollout",
    "sequence_log_probs",
    "token_log_probs",
]
