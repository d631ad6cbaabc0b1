"""Reward functions for online RL: rule-based (math answers, formats, reasoning-gym tasks) and
model-based (a reward / classifier model), plus torchtune main's ``torchtune.dev.rl.rewards``
classes and ``RewardOutput``.

A reward function is ``fn(prompts, completions, rows) -> list[float]`` with a ``name``;
``rows`` are the dataset rows the prompts came from (``answer`` etc.). :func:`compute_rewards`
runs several, checks what they return and sums them with weights.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from tunesmith.config._errors import ConfigError

__all__ = [
    "FormatReward",
    "FormattedMathCorrectnessReward",
    "MathAnswerReward",
    "ModelReward",
    "ReasoningGymReward",
    "Reward",
    "RewardError",
    "RewardFunction",
    "RewardOutput",
    "ThinkingAnswerFormattingReward",
    "batch_shaped_correctness_reward",
    "compute_rewards",
    "extract_answer",
    "math_answers_equal",
    "shaped_correctness_reward",
]


class RewardError(ConfigError):
    """A reward function failed or returned something unusable (names the function and row)."""


@runtime_checkable
class RewardFunction(Protocol):
    """``fn(prompts [b], completions [b], rows [b]) -> [b] floats``; ``name`` labels metrics."""

    name: str

    def __call__(
        self, prompts: list[str], completions: list[str], rows: list[dict]
    ) -> list[float]: ...


def _name_of(fn: Any) -> str:
    return str(getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def compute_rewards(
    functions: Sequence[RewardFunction],
    prompts: Sequence[str],
    completions: Sequence[str],
    rows: Sequence[dict],
    *,
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run every reward function on the batch.

    Returns:
        ``(total [b] float32 = sum_i weight_i * reward_i, {function name: [b] float32})``.
        Names repeat-safe: a second function of the same name gets a ``_2`` suffix.

    Raises:
        RewardError: a function raised, returned the wrong number of values, or a value that
            is not a finite number (the message names the function and the row).
    """
    if not functions:
        raise RewardError("no reward functions configured: set reward_functions")
    b = len(completions)
    if len(prompts) != b or len(rows) != b:
        raise ValueError(f"prompts ({len(prompts)}), completions ({b}), rows ({len(rows)}) differ")
    if weights is None:
        weights = [1.0] * len(functions)
    if len(weights) != len(functions):
        raise RewardError(
            f"reward weights has {len(weights)} entries for {len(functions)} reward functions"
        )
    total = torch.zeros(b, dtype=torch.float32)
    per_fn: dict[str, torch.Tensor] = {}
    for fn, weight in zip(functions, weights):
        name = _name_of(fn)
        try:
            values = fn(list(prompts), list(completions), list(rows))
        except RewardError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of user code is reported as theirs
            raise RewardError(
                f"reward function {name!r} raised {type(e).__name__}: {e} (batch of {b} rows): "
                "fix the function or the data it reads"
            ) from e
        if isinstance(values, RewardOutput):
            values = values.total_reward
        if isinstance(values, torch.Tensor):
            values = values.detach().float().flatten().tolist()
        values = list(values)
        if len(values) != b:
            raise RewardError(
                f"reward function {name!r} returned {len(values)} values for {b} completions: "
                "return one float per completion"
            )
        for row, v in enumerate(values):
            try:
                ok = math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise RewardError(
                    f"reward function {name!r} returned {v!r} for row {row}: rewards must be "
                    "finite numbers"
                )
        key, n = name, 2
        while key in per_fn:
            key, n = f"{name}_{n}", n + 1
        per_fn[key] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        total += float(weight) * per_fn[key]
    return total, per_fn


# ---------------------------------------------------------------------------- answers
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_answer(completion: str, answer_tag: str | None = "answer") -> str:
    """The final answer in a completion: the last ``<answer_tag>...</answer_tag>`` content,
    else a ``\\boxed{...}``, else a GSM8K-style ``#### x``, else the whole text (stripped)."""
    if answer_tag:
        tagged = re.findall(rf"<{answer_tag}>(.*?)</{answer_tag}>", completion, re.DOTALL)
        if tagged:
            return tagged[-1].strip()
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", completion)
    if boxed:
        return boxed[-1].strip()
    if "####" in completion:
        return completion.rsplit("####", 1)[1].strip()
    return completion.strip()


def _normalise(text: str) -> str:
    """Numbers compare as numbers (``1,000.0`` == ``1000``); other text case/space-insensitive."""
    text = text.strip().strip(".").replace("$", "").strip()
    numbers = _NUMBER.findall(text)
    if numbers:
        raw = numbers[-1].replace(",", "")
        try:
            if "/" in raw:
                num, den = raw.split("/")
                value = float(num) / float(den)
            else:
                value = float(raw)
            return repr(round(value, 9))
        except (ValueError, ZeroDivisionError):
            pass
    return " ".join(text.lower().split())


def math_answers_equal(gold: str, attempt: str) -> bool:
    """True when ``attempt`` states the same answer as ``gold``: ``math_verify`` when
    installed, else numeric / normalised-string comparison."""
    if importlib.util.find_spec("math_verify") is not None:
        import math_verify

        try:
            return bool(math_verify.verify(math_verify.parse(gold), math_verify.parse(attempt)))
        except Exception:  # noqa: BLE001 - math_verify raises on unparsable text
            return False
    return _normalise(gold) == _normalise(attempt)


class MathAnswerReward:
    """``positive`` when the completion's final answer equals the row's answer, else
    ``negative`` (answers compared with ``math_verify`` when installed).

    Args:
        answer_key: the row column holding the reference answer.
        answer_tag: the completion's answer is inside ``<answer_tag>...</answer_tag>``
            (None: boxed / ``####`` / whole text, see :func:`extract_answer`).
    """

    def __init__(
        self,
        answer_key: str = "answer",
        answer_tag: str | None = "answer",
        positive: float = 1.0,
        negative: float = 0.0,
        name: str = "math_answer",
    ) -> None:
        self.answer_key, self.answer_tag = answer_key, answer_tag
        self.positive, self.negative, self.name = positive, negative, name

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        out = []
        for i, (completion, row) in enumerate(zip(completions, rows)):
            if self.answer_key not in row or row[self.answer_key] is None:
                raise RewardError(
                    f"reward function {self.name!r}: row {i} has no {self.answer_key!r} column: "
                    "use a dataset with answers or set answer_key"
                )
            attempt = extract_answer(completion, self.answer_tag)
            ok = math_answers_equal(str(row[self.answer_key]), attempt)
            out.append(self.positive if ok else self.negative)
        return out


class FormatReward:
    """``reward`` when the completion matches ``pattern`` (``re.search``, DOTALL), else
    ``negative``."""

    def __init__(
        self,
        pattern: str = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$",
        reward: float = 1.0,
        negative: float = 0.0,
        name: str = "format",
    ) -> None:
        try:
            self.regex = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise ConfigError(f"FormatReward pattern {pattern!r} is not a valid regex: {e}") from e
        self.reward, self.negative, self.name = reward, negative, name

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        return [self.reward if self.regex.search(c) else self.negative for c in completions]


class ReasoningGymReward:
    """Scores completions with reasoning_gym's own ``score_answer`` for the row's task.

    Rows come from :func:`tunesmith.datasets.reasoning_gym_dataset` (they carry the
    generated ``entry``: question, answer, metadata with ``source_dataset``).
    """

    def __init__(self, answer_tag: str | None = "answer", name: str = "reasoning_gym") -> None:
        self.answer_tag, self.name = answer_tag, name

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        import reasoning_gym

        out = []
        for i, (completion, row) in enumerate(zip(completions, rows)):
            entry = row.get("entry", row)
            task = (entry.get("metadata") or {}).get("source_dataset")
            if task is None:
                raise RewardError(
                    f"reward function {self.name!r}: row {i} has no reasoning-gym entry "
                    "(metadata.source_dataset): use reasoning_gym_dataset rows"
                )
            score = reasoning_gym.get_score_answer_fn(task)
            answer = extract_answer(completion, self.answer_tag)
            out.append(float(score(answer, entry)))
        return out


class ModelReward:
    """A reward / classifier model's score of ``prompt + completion`` (its class
    ``label`` at the last real token), see :func:`tunesmith.modules.classifier.sequence_scores`.

    Args:
        model: a ``TransformerDecoder`` with a ``[d] -> [num_classes]`` head.
        tokenizer: encodes ``prompt + completion`` (``encode(text, add_bos=, add_eos=)``).
        max_seq_len: longest scored sequence (longer ones keep their last tokens).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        pad_id: int = 0,
        label: int = 0,
        max_seq_len: int | None = None,
        batch_size: int = 8,
        name: str = "reward_model",
    ) -> None:
        self.model, self.tokenizer, self.pad_id, self.label = model, tokenizer, pad_id, label
        self.max_seq_len = max_seq_len or getattr(model, "max_seq_len", None)
        self.batch_size, self.name = batch_size, name

    def _encode(self, text: str) -> list[int]:
        try:
            ids = self.tokenizer.encode(text, add_bos=True, add_eos=True)
        except TypeError:
            ids = self.tokenizer.encode(text)
        if self.max_seq_len is not None:
            ids = ids[-self.max_seq_len :]
        return list(ids)

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        from tunesmith.modules.classifier import sequence_scores

        device = next(self.model.parameters()).device
        seqs = [self._encode(p + c) for p, c in zip(prompts, completions)]
        out: list[float] = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start : start + self.batch_size]
            width = max(len(s) for s in chunk)
            tokens = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.bool)
            for i, s in enumerate(chunk):
                tokens[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = True
            scores = sequence_scores(self.model, tokens.to(device), mask.to(device))
            out.extend(scores[:, self.label].float().tolist())
        return out


# ------------------------------------------------------------- torchtune main's rewards
@dataclass
class RewardOutput:
    """torchtune main's reward result: ``total_reward [b]``, ``successes [b]`` and optional
    sub-rewards for logging."""

    reward_base_name: str
    total_reward: torch.Tensor
    successes: torch.Tensor
    rewards: dict[str, torch.Tensor] = field(default_factory=dict)

    def log(self, prefix: str = "") -> dict[str, float]:
        """``{prefix/name/sub: mean, prefix/name: mean total, prefix/name/successes: mean}``."""
        base = f"{prefix}/{self.reward_base_name}" if prefix else self.reward_base_name
        out = {f"{base}/{k}": v.float().mean().item() for k, v in (self.rewards or {}).items()}
        out[base] = self.total_reward.float().mean().item()
        out[f"{base}/successes"] = self.successes.float().mean().item()
        return out


class Reward:
    """torchtune main's reward base: called as ``(completion_ids, completions, answers)`` it
    returns a :class:`RewardOutput`; as ``(prompts, completions, rows)`` (our
    :class:`RewardFunction`) a list of floats, reading each row's ``answer``."""

    name = "reward"

    def score(self, completions: list[str], answers: list[str]) -> RewardOutput:
        raise NotImplementedError

    def __call__(self, first: Any, completions: list[str], third: list[Any]) -> Any:
        if isinstance(first, torch.Tensor):  # torchtune: (completion_ids, completions, answers)
            return self.score(list(completions), [str(a) for a in third])
        answers = [str(r.get("answer", "")) if isinstance(r, dict) else str(r) for r in third]
        return self.score(list(completions), answers).total_reward.tolist()


class FormattedMathCorrectnessReward(Reward):
    """torchtune's: ``positive_reward`` when the completion verifies against the answer
    (math_verify), half of it when the answer string occurs in the completion, else
    ``negative_reward``."""

    name = "math_correctness"

    def __init__(self, answer_tag: str, positive_reward: float, negative_reward: float = 0.0):
        self.answer_tag = answer_tag
        self.positive_reward, self.negative_reward = positive_reward, negative_reward

    def score(self, completions: list[str], answers: list[str]) -> RewardOutput:
        rewards = []
        for completion, answer in zip(completions, answers):
            if math_answers_equal(answer, completion):
                rewards.append(self.positive_reward)
            elif answer in completion:
                rewards.append(self.positive_reward / 2)
            else:
                rewards.append(self.negative_reward)
        total = torch.tensor(rewards, dtype=torch.float32)
        return RewardOutput("math_correctness", total, (total == self.positive_reward).float())


class ThinkingAnswerFormattingReward(Reward):
    """torchtune's: a soft (one think then one answer block) plus a strict (exact newline
    layout) formatting reward."""

    name = "formatting"

    def __init__(
        self, think_tag: str, answer_tag: str, positive_reward: float, negative_reward: float = 0.0
    ):
        self.think_tag, self.answer_tag = think_tag, answer_tag
        self.positive_reward, self.negative_reward = positive_reward, negative_reward

    def score(self, completions: list[str], answers: list[str]) -> RewardOutput:
        think, ans = self.think_tag, self.answer_tag
        think_re, answer_re = rf"<{think}>.*?</{think}>", rf"<{ans}>.*?</{ans}>"
        strict_re = rf"^<{think}>\n.*?\n</{think}>\n<{ans}>\n.*?\n</{ans}>\n$"
        soft, strict = [], []
        for c in completions:
            ok = re.match(strict_re, c, re.DOTALL | re.MULTILINE)
            strict.append(self.positive_reward if ok else self.negative_reward)
            thinks, answers_found = (
                re.findall(think_re, c, re.DOTALL),
                re.findall(answer_re, c, re.DOTALL),
            )
            ordered = (
                len(thinks) == 1
                and len(answers_found) == 1
                and c.find(thinks[0]) < c.find(answers_found[0])
            )
            soft.append(self.positive_reward if ordered else self.negative_reward)
        soft_t = torch.tensor(soft, dtype=torch.float32)
        strict_t = torch.tensor(strict, dtype=torch.float32)
        total = soft_t + strict_t
        return RewardOutput(
            "formatting",
            total,
            (total >= self.positive_reward).float(),
            {"soft_format_reward": soft_t, "strict_format_reward": strict_t},
        )


def shaped_correctness_reward(answer: str, completion: str) -> tuple[float, float]:
    """torchtune ``dev/grpo``'s shaped reward of a completion that follows ``<think>``:
    ``(reward, success)``; 100 and success when the last answer tag equals ``answer``."""
    text = "<think>" + completion.replace("<<", "").replace(">>", "")
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    found = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    answers = [found.group(1).strip() if found else ""]
    reward = 5.0 + 5.0  # torchtune's tag lists always hold one (possibly empty) entry
    del think
    if any(a == answer for a in answers):
        reward += 20.0
    if any(answer in a for a in answers):
        reward += 10.0
    if answers[-1] == answer:
        return 100.0, 1.0
    return reward, 0.0


def batch_shaped_correctness_reward(
    tokenizer: Any, completions: torch.Tensor, answers: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchtune's batched :func:`shaped_correctness_reward` over ``[B, G, L]`` completion ids:
    ``(rewards [B, G], successes [B, G])``."""
    batch, group = completions.shape[:2]
    rewards = torch.zeros(batch, group, dtype=torch.float32)
    successes = torch.zeros(batch, group, dtype=torch.float32)
    for b in range(batch):
        for g in range(group):
            text = tokenizer.decode(completions[b, g].tolist())
            rewards[b, g], successes[b, g] = shaped_correctness_reward(answers[b], text)
    return rewards, successes
