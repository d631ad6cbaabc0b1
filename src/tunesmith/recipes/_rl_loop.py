"""Pieces the online-RL recipes (``grpo``, ``ppo``) share: sampling settings from the config,
reward functions, pre-flight checks of prompts and rewards, the rollout + reward step with a
batch-invariant rollout RNG, rank gathers and the per-step RL metrics.

Shapes: ``P`` prompts on this rank, ``G`` samples per prompt, ``b = P * G`` completions (a
prompt's samples contiguous), ``n`` response length, ``W`` ranks.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.utils.data import Dataset

from tunesmith.config import ConfigError, instantiate
from tunesmith.utils import get_logger

__all__ = [
    "RolloutChunk",
    "RolloutBatch",
    "sampling_params",
    "build_reward_functions",
    "check_prompt_lengths",
    "probe_rewards",
    "rollout_seed",
    "generate_rollouts",
    "all_gather_rows",
    "rl_step_metrics",
    "finish_at_stop",
    "decode",
]

log = get_logger(__name__)

DEFAULT_REWARDS = (
    {"_component_": "tunesmith.rlhf.rewards.ThinkingAnswerFormattingReward",
     "think_tag": "think", "answer_tag": "answer", "positive_reward": 1.0,
     "negative_reward": 0.0},
    {"_component_": "tunesmith.rlhf.rewards.FormattedMathCorrectnessReward",
     "answer_tag": "answer", "positive_reward": 10.0, "negative_reward": 0.0},
)  # fmt: skip
"""torchtune's dev GRPO recipe scores with a think/answer format reward and math correctness
when no ``reward_functions`` are configured (its ``batched_rewards``); so does this one, with
the values of torchtune's ``qwen3B_sync_grpo`` config."""


# ------------------------------------------------------------------------------- config pieces
def sampling_params(cfg: DictConfig, tokenizer: Any, *, stop: bool = True) -> Any:
    """``SamplingParams`` from torchtune's keys ``max_generated_tokens``, ``temperature``,
    ``top_k`` (and ``top_p``); stop tokens from ``stop_token_ids`` (must hold the tokenizer's
    eos id, as torchtune checks) or else the tokenizer's ``stop_tokens``. ``stop=False`` leaves
    the stop tokens out (generation then runs the full budget; see :func:`finish_at_stop`)."""
    from tunesmith.rlhf.rollout import SamplingParams

    stops = stop_tokens(cfg, tokenizer)
    return SamplingParams(
        max_new_tokens=int(cfg.max_generated_tokens),
        temperature=float(cfg.get("temperature", 1.0)),
        top_k=None if cfg.get("top_k") is None else int(cfg.top_k),
        top_p=None if cfg.get("top_p") is None else float(cfg.top_p),
        stop_tokens=stops if stop else (),
    )


def stop_tokens(cfg: DictConfig, tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a completion (see :func:`sampling_params`)."""
    if cfg.get("stop_token_ids"):
        ids = tuple(int(t) for t in cfg.stop_token_ids)
        eos = getattr(tokenizer, "eos_id", None)
        if eos is not None and eos not in ids:
            raise ConfigError(
                f"stop_token_ids={list(ids)} lacks the tokenizer's eos id {eos}: add it",
                key="stop_token_ids",
            )
        return ids
    ids = getattr(tokenizer, "stop_tokens", None)
    if not ids:
        eos = getattr(tokenizer, "eos_id", None)
        log.warning("the tokenizer has no stop_tokens and no stop_token_ids are set: using eos")
        ids = [] if eos is None else [eos]
    return tuple(int(t) for t in ids)


def build_reward_functions(cfg: DictConfig) -> tuple[list[Any], list[float] | None]:
    """``(functions, weights)`` from ``reward_functions`` (a list of components; torchtune's
    key) and ``reward_weights`` (TRL's); without ``reward_functions``, torchtune's two."""
    nodes = cfg.get("reward_functions")
    if nodes is None:
        log.info("no reward_functions in the config: using torchtune's format + math rewards")
        nodes = ListConfig(list(DEFAULT_REWARDS))
    if isinstance(nodes, DictConfig):
        nodes = ListConfig([nodes])
    if len(nodes) == 0:
        raise ConfigError("reward_functions is empty: list at least one", key="reward_functions")
    functions = [instantiate(node) for node in nodes]
    for i, fn in enumerate(functions):
        if not callable(fn):
            raise ConfigError(
                f"reward_functions[{i}]._component_={nodes[i].get('_component_')} is not "
                "callable as fn(prompts, completions, rows) -> list[float]",
                key=f"reward_functions[{i}]",
            )
    weights = cfg.get("reward_weights")
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(functions):
            raise ConfigError(
                f"reward_weights has {len(weights)} values for {len(functions)} "
                "reward_functions: give one weight per function",
                key="reward_weights",
            )
    return functions, weights


def reward_name(fn: Any) -> str:
    return str(getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__)


# ----------------------------------------------------------------------------- pre-flight checks
def check_prompt_lengths(
    datasets: Sequence[Dataset], max_new_tokens: int, limit: int | None, what: str
) -> None:
    """Every prompt plus ``max_new_tokens`` fits ``limit`` tokens (``what`` names where the
    limit comes from); else one error naming the dataset row."""
    from tunesmith.data import DataError

    if not limit:
        return
    for d, ds in enumerate(datasets):
        for i in range(len(ds)):  # type: ignore[arg-type]
            n = len(ds[i]["tokens"])
            if n + max_new_tokens > limit:
                where = f"dataset{f'[{d}]' if len(datasets) > 1 else ''} row {i}"
                raise DataError(
                    f"the prompt has {n} tokens; with max_generated_tokens={max_new_tokens} it "
                    f"needs {n + max_new_tokens}, more than the context of {limit} ({what})",
                    where,
                    "shorten or drop that prompt, lower max_generated_tokens, or raise the limit",
                    key="max_generated_tokens",
                )


def probe_rewards(functions: Sequence[Any], weights: Any, dataset: Dataset) -> None:
    """Score an empty completion of the first prompts with every reward function, before any
    weights load: a function that raises or returns NaN fails now, naming itself and the row."""
    from tunesmith.rlhf.rewards import RewardError, compute_rewards

    rows = [dataset[i] for i in range(min(2, len(dataset)))]  # type: ignore[arg-type]
    prompts, scored = [r["prompt"] for r in rows], [reward_row(r) for r in rows]
    try:
        compute_rewards(functions, prompts, ["" for _ in rows], scored, weights=weights)
    except RewardError as err:
        for i in range(len(rows)):  # which dataset row: one at a time
            try:
                compute_rewards(functions, prompts[i : i + 1], [""], scored[i : i + 1],
                                weights=weights)  # fmt: skip
            except RewardError as one:
                raise RewardError(
                    f"{one} (dataset row {i}, scoring an empty completion before training)"
                ) from err
        raise


def reward_row(sample: Mapping[str, Any]) -> dict:
    """What a reward function sees as the row: the dataset row, its ``answer`` the prompt
    dataset's reference answer (e.g. GSM8K's final number, not the worked solution)."""
    out = dict(sample.get("row") or {})
    if sample.get("answer") is not None or "answer" not in out:
        out["answer"] = sample.get("answer")
    return out


# ---------------------------------------------------------------------------------- rollouts
@dataclass
class RolloutChunk:
    """One generation call: ``p`` prompts x ``G`` samples, the unit of the later passes."""

    rollout: Any  # tunesmith.rlhf.rollout.Rollout, b = p * G rows
    ref_logprobs: torch.Tensor | None = None  # [b, n]
    old_logprobs: torch.Tensor | None = None  # [b, n]
    advantages: torch.Tensor | None = None  # [b]


@dataclass
class RolloutBatch:
    """A step's rollouts on this rank, scored."""

    chunks: list[RolloutChunk]
    rewards: torch.Tensor  # [b] float32, weighted total
    per_function: dict[str, torch.Tensor]  # name -> [b]
    completions: list[str]
    seconds: float = 0.0
    generated_tokens: int = 0
    lengths: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [b] long
    truncated: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))


def rollout_seed(seed: int, step: int, prompts: Sequence[Sequence[int]]) -> int:
    """The sampling seed of one generation call: a function of the run's seed, the step and
    the prompts' tokens only, so the same prompts sample the same completions on any number
    of ranks and after a resume (nothing to carry but ``seed``)."""
    h = zlib.crc32(repr([list(p) for p in prompts]).encode())
    return (int(seed) * 1_000_003 + int(step) * 9_176_467 + h) % (2**63 - 1)


def finish_at_stop(rollout: Any, stops: Sequence[int]) -> Any:
    """A rollout generated without stop tokens, cut as if generation had stopped at each row's
    first stop token (kept): later positions become padding with log-prob 0, ``truncated``
    marks rows with none. Used under FSDP2, where every rank must run the same number of
    decoding steps (each forward all-gathers), so no rank may stop early."""
    if not stops:
        return rollout
    tokens, mask = rollout.response_tokens, rollout.response_mask
    is_stop = torch.isin(tokens, torch.tensor(list(stops), device=tokens.device)) & mask
    seen_before = (is_stop.long().cumsum(-1) - is_stop.long()) > 0
    keep = mask & ~seen_before
    rollout.response_tokens = torch.where(keep, tokens, torch.full_like(tokens, rollout.pad_id))
    rollout.response_mask = keep
    rollout.logprobs = torch.where(keep, rollout.logprobs, torch.zeros_like(rollout.logprobs))
    rollout.truncated = ~is_stop.any(-1)
    return rollout


@torch.no_grad()
def generate_rollouts(
    engine: Any,
    model: nn.Module,
    batch: Mapping[str, Any],
    params: Any,
    *,
    num_samples: int,
    chunk_prompts: int,
    seed: int,
    step: int,
    tokenizer: Any,
    functions: Sequence[Any],
    weights: Sequence[float] | None,
    stops: Sequence[int] = (),
) -> RolloutBatch:
    """Sample ``num_samples`` completions of each prompt of ``batch`` (``padded_collate_rl``
    output) in calls of ``chunk_prompts`` prompts, the policy in eval mode, then score them.

    ``stops``: the stop tokens to apply after generation (:func:`finish_at_stop`) when
    ``params`` carries none. Returns a :class:`RolloutBatch` (rewards ``[P * G]``)."""
    from tunesmith.rlhf.rewards import compute_rewards

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    prompts: list[list[int]] = [list(t) for t in batch["tokens"]]
    rng = torch.Generator(device=next(model.parameters()).device)
    chunks: list[RolloutChunk] = []
    try:
        for lo in range(0, len(prompts), chunk_prompts):
            part = prompts[lo : lo + chunk_prompts]
            rng.manual_seed(rollout_seed(seed, step, part))
            rollout = engine.generate(part, params, num_samples=num_samples, rng=rng)
            chunks.append(RolloutChunk(finish_at_stop(rollout, stops)))
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    texts: list[str] = []
    prompt_texts: list[str] = []
    rows: list[dict] = []
    for c, lo in zip(chunks, range(0, len(prompts), chunk_prompts)):
        r = c.rollout
        for i in range(r.response_tokens.shape[0]):
            k = lo + int(r.prompt_index[i])
            ids = r.response_tokens[i][r.response_mask[i]].tolist()
            texts.append(decode(tokenizer, ids))
            prompt_texts.append(batch["prompt"][k])
            rows.append(reward_row({"row": batch["row"][k], "answer": batch["answer"][k]}))
    total, per_function = compute_rewards(functions, prompt_texts, texts, rows, weights=weights)
    lengths = torch.cat([c.rollout.response_mask.sum(-1).cpu() for c in chunks])
    truncated = torch.cat([c.rollout.truncated.cpu() for c in chunks])
    return RolloutBatch(
        chunks=chunks,
        rewards=total.float().cpu(),
        per_function={k: v.float().cpu() for k, v in per_function.items()},
        completions=texts,
        seconds=seconds,
        generated_tokens=int(lengths.sum()),
        lengths=lengths,
        truncated=truncated,
    )


def decode(tokenizer: Any, ids: list[int]) -> str:
    """The completion's text. Ids the tokenizer cannot decode (embedding rows past its
    vocabulary, e.g. Qwen2.5's padded rows, which a sampled policy can emit) are left out."""
    try:
        return tokenizer.decode(ids)
    except (KeyError, ValueError, IndexError, OverflowError, TypeError):
        kept = []
        for i in ids:
            try:
                tokenizer.decode([i])
            except (KeyError, ValueError, IndexError, OverflowError, TypeError):
                continue
            kept.append(i)
        return tokenizer.decode(kept)


# ---------------------------------------------------------------------------- ranks, metrics
def all_gather_rows(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[b, ...]`` on every rank -> ``[W * b, ...]`` in rank order (a copy on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x.clone()
    local = x.to(device)
    out = local.new_empty((dist.get_world_size() * local.shape[0], *local.shape[1:]))
    dist.all_gather_into_tensor(out, local.contiguous())
    return out.to(x.device)


def rl_step_metrics(
    rewards: torch.Tensor,
    per_function: Mapping[str, torch.Tensor],
    advantages: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    *,
    group_size: int,
    rollout_tokens_per_second: float,
    train_tokens_per_second: float,
) -> dict[str, float]:
    """The step's RL metrics over the whole (all-rank) batch: ``reward/*`` (total and per
    function mean/std, group std, zero-std fraction), ``advantage/*``, ``response_length/*``,
    ``truncated_fraction``, ``rollout_tokens_per_second``, ``train_tokens_per_second``."""
    from tunesmith.rlhf.rl_metrics import advantage_stats, reward_stats

    out: dict[str, Any] = {}
    out.update(reward_stats(rewards, per_function, group_size=group_size))
    out.update(advantage_stats(advantages))
    lengths = lengths.float()
    out["response_length/mean"] = lengths.mean()
    out["response_length/min"] = lengths.min()
    out["response_length/max"] = lengths.max()
    out["truncated_fraction"] = truncated.float().mean()
    out["rollout_tokens_per_second"] = rollout_tokens_per_second
    out["train_tokens_per_second"] = train_tokens_per_second
    return {k: float(v) for k, v in out.items()}
