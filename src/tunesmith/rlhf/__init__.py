"""Preference and RL training pieces: preference losses (``tunesmith.rlhf.loss``, torchtune's
``torchtune.rlhf.loss.*`` names) and per-sequence log-probabilities."""

from tunesmith.rlhf import loss
from tunesmith.rlhf._log_probs import get_batch_log_probs, sequence_log_probs

__all__ = ["get_batch_log_probs", "loss", "sequence_log_probs"]
