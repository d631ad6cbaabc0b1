"""Prompt datasets for online RL (GRPO / PPO): prompts with a reference answer to verify.

Rows are ``{"tokens": list[int] (the prompt, no response), "prompt": str, "answer": str |
None, "row": dict}``; :func:`padded_collate_rl` batches them for the rollout engine.
Builders: :func:`gsm8k_dataset` / :func:`gsm8k_sft` (torchtune main's ``dev/grpo`` and
``dev/rl`` names and prompt), :func:`rl_prompt_dataset` (any prompt/answer columns, chat
formatted), :func:`reasoning_gym_dataset` (procedurally generated tasks, offline).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from tunesmith.data._errors import DataError
from tunesmith.data._prompt import prompt_tokens
from tunesmith.datasets._loading import describe, load_rows

__all__ = [
    "BASE_PROMPT",
    "PREAMBLE_PROMPT",
    "RLPromptDataset",
    "gsm8k_dataset",
    "gsm8k_sft",
    "normalize_gsm",
    "padded_collate_rl",
    "reasoning_gym_dataset",
    "rl_prompt_dataset",
    "sft_gsm_transform",
]

#: torchtune main's ``dev/rl/data.py`` prompt (the completion starts inside ``<think>``).
BASE_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think></think> and <answer></answer> tags, respectively, i.e., <think>reasoning process "
    "here</think> <answer>answer here</answer>. User: %s. Assistant: <think>"
)
#: torchtune main's ``dev/rl/gsm8k.py`` SFT preamble.
PREAMBLE_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think></think> and <answer></answer> tags, respectively, i.e., <think>reasoning process "
    "here</think> <answer>answer here</answer>. User: {question} Assistant: "
)
TRAINABLE_PROMPT = "<think>{cot}</think> <answer>{answer}</answer>"
#: the system prompt of chat-formatted RL prompts that ask for think / answer tags
REASONING_SYSTEM_PROMPT = (
    "Think about the problem inside <think></think> tags, then give only the final answer "
    "inside <answer></answer> tags."
)


class RLPromptDataset(Dataset):
    """A list of prepared prompt rows (see the module docstring); ``rows[i]`` is row ``i``."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def max_token_id(self) -> int | None:
        """The largest token id of any row (the recipes' vocabulary check)."""
        return max((max(r["tokens"]) for r in self.rows if r["tokens"]), default=None)


def _column(row: Mapping[str, Any], column: str, key: str, where: str, index: int) -> Any:
    if column not in row or row[column] is None:
        raise DataError(
            f"row {index} has no {column!r} column; the dataset has columns {sorted(row)}",
            f"dataset {where}, row {index}",
            f"set dataset.{key} to the column that holds it",
            key=f"dataset.{key}",
        )
    return row[column]


def _chat_tokens(tokenizer: Any, prompt: str, system_prompt: str | None) -> list[int]:
    if system_prompt:
        return prompt_tokens(tokenizer, {"system": system_prompt, "user": prompt})
    return prompt_tokens(tokenizer, prompt)


def _partition_filter(partition: str | None) -> Callable[[Any, int], bool] | None:
    """torchtune's ``partition="start-end/total"``: keep rows with ``start <= i % total <= end``."""
    if partition is None:
        return None
    match = re.match(r"^(\d+)-(\d+)/(\d+)$", partition)
    if not match:
        raise DataError(
            f"invalid partition {partition!r}",
            "dataset.partition",
            "use the form start-end/total, e.g. 0-7/8",
            key="dataset.partition",
        )
    start, end, total = map(int, match.groups())
    return lambda _row, idx: start <= idx % total <= end


def _load(
    source: str,
    filter_fn: Callable | None,
    partition: str | None,
    load_dataset_kwargs: dict[str, Any],
) -> tuple[Any, str]:
    data, kwargs = load_rows(source, filter_fn=filter_fn, **load_dataset_kwargs)
    keep = _partition_filter(partition)
    if keep is not None:
        data = data.filter(keep, with_indices=True)
    return data, describe(kwargs["path"], kwargs)


def normalize_gsm(problem: Mapping[str, str]) -> dict[str, str]:
    """torchtune's: a GSM8K row -> ``{"question", "cot", "answer"}`` (split at ``#### ``)."""
    cot, answer = problem["answer"].split("#### ")
    return {"question": problem["question"], "cot": cot, "answer": answer}


def sft_gsm_transform(problem: Mapping[str, str]) -> dict[str, str]:
    """torchtune's: a GSM8K row -> ``{"preamble", "trainable"}`` for SFT."""
    cot, answer = problem["answer"].split("#### ")
    return {
        "preamble": PREAMBLE_PROMPT.format(question=problem["question"]),
        "trainable": TRAINABLE_PROMPT.format(cot=cot, answer=answer),
    }


def _gsm_row(row: Mapping[str, Any], where: str, index: int) -> dict[str, str]:
    question = _column(row, "question", "source", where, index)
    solution = str(_column(row, "answer", "source", where, index))
    if "#### " not in solution:
        raise DataError(
            "the answer has no '#### <final answer>' part (GSM8K format)",
            f"dataset {where}, row {index}, column 'answer'",
            "use GSM8K-formatted rows or rl_prompt_dataset with answer_column",
        )
    return normalize_gsm({"question": str(question), "answer": solution})


def gsm8k_dataset(
    tokenizer: Any,
    *,
    source: str = "openai/gsm8k",
    filter_fn: Callable | None = None,
    split: str = "train",
    name: str | None = "main",
    partition: str | None = None,
    chat_format: bool = False,
    **load_dataset_kwargs: Any,
) -> RLPromptDataset:
    """GSM8K prompts with their final answers (torchtune main's ``gsm8k_dataset``).

    The prompt is torchtune's :data:`BASE_PROMPT` encoded with ``tokenizer.encode(...,
    add_eos=False)``; ``chat_format=True`` instead sends the question through the chat
    template with a think/answer system prompt. Local files: ``source="json",
    data_files=path`` (rows with GSM8K's ``question`` and ``answer`` columns).
    """
    if name is not None and source == "openai/gsm8k":
        load_dataset_kwargs["name"] = name
    data, where = _load(source, filter_fn, partition, {"split": split, **load_dataset_kwargs})
    rows = []
    for i, row in enumerate(data):
        problem = _gsm_row(row, where, i)
        if chat_format:
            prompt = problem["question"]
            tokens = _chat_tokens(tokenizer, prompt, REASONING_SYSTEM_PROMPT)
        else:
            prompt = BASE_PROMPT % problem["question"]
            tokens = list(tokenizer.encode(prompt, add_eos=False))
        rows.append(
            {
                "tokens": tokens,
                "prompt": prompt,
                "answer": problem["answer"].strip(),
                "row": dict(row),
            }
        )
    return RLPromptDataset(rows)


def gsm8k_sft(
    tokenizer: Any,
    *,
    source: str = "openai/gsm8k",
    filter_fn: Callable | None = None,
    split: str = "train",
    name: str | None = "main",
    partition: str | None = None,
    **load_dataset_kwargs: Any,
) -> Dataset:
    """GSM8K for SFT with chain of thought (torchtune main's ``gsm8k_sft``): samples are
    ``{"tokens", "labels"}``, the preamble masked, ``<think>cot</think> <answer>a</answer>``
    trained."""
    from tunesmith.datasets._sft import CROSS_ENTROPY_IGNORE_IDX

    if name is not None and source == "openai/gsm8k":
        load_dataset_kwargs["name"] = name
    data, where = _load(source, filter_fn, partition, {"split": split, **load_dataset_kwargs})
    rows = []
    for i, row in enumerate(data):
        _gsm_row(row, where, i)
        parts = sft_gsm_transform(row)
        pre = list(tokenizer.encode(parts["preamble"], add_eos=False))
        trained = list(tokenizer.encode(parts["trainable"], add_bos=False))
        rows.append(
            {"tokens": pre + trained, "labels": [CROSS_ENTROPY_IGNORE_IDX] * len(pre) + trained}
        )
    return RLPromptDataset(rows)


def rl_prompt_dataset(
    tokenizer: Any,
    *,
    source: str,
    column: str = "prompt",
    answer_column: str | None = "answer",
    system_prompt: str | None = None,
    filter_fn: Callable | None = None,
    split: str = "train",
    max_seq_len: int | None = None,
    **load_dataset_kwargs: Any,
) -> RLPromptDataset:
    """Prompts from any dataset: column ``column`` as the user message (chat formatted, with
    an optional system prompt), ``answer_column`` as the reference answer (None: no answers,
    e.g. for a reward model). Prompts over ``max_seq_len`` tokens are an error naming the row.
    """
    data, where = _load(source, filter_fn, None, {"split": split, **load_dataset_kwargs})
    rows = []
    for i, row in enumerate(data):
        prompt = str(_column(row, column, "column", where, i))
        answer = None
        if answer_column is not None:
            answer = str(_column(row, answer_column, "answer_column", where, i))
        tokens = _chat_tokens(tokenizer, prompt, system_prompt)
        if max_seq_len is not None and len(tokens) > max_seq_len:
            raise DataError(
                f"prompt of {len(tokens)} tokens is longer than max_seq_len={max_seq_len}",
                f"dataset {where}, row {i}",
                "shorten the prompt, filter it out, or raise dataset.max_seq_len",
                key="dataset.max_seq_len",
            )
        rows.append({"tokens": tokens, "prompt": prompt, "answer": answer, "row": dict(row)})
    return RLPromptDataset(rows)


def reasoning_gym_dataset(
    tokenizer: Any,
    *,
    task: str = "basic_arithmetic",
    size: int = 500,
    seed: int = 0,
    system_prompt: str | None = REASONING_SYSTEM_PROMPT,
    task_config: Mapping[str, Any] | None = None,
) -> RLPromptDataset:
    """``size`` procedurally generated problems of a reasoning-gym ``task`` (offline, seeded).

    Each row's ``row["entry"]`` is reasoning-gym's entry (question, answer, metadata), which
    :class:`tunesmith.rlhf.rewards.ReasoningGymReward` scores against.
    """
    import reasoning_gym

    try:
        data = reasoning_gym.create_dataset(
            task, size=int(size), seed=int(seed), **dict(task_config or {})
        )
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"reasoning-gym cannot create task {task!r}: {e}",
            "dataset.task / dataset.task_config",
            "use a registered task name (e.g. basic_arithmetic, chain_sum) and its options",
            key="dataset.task",
        ) from e
    rows = []
    for i in range(len(data)):
        entry = data[i]
        prompt = str(entry["question"])
        rows.append(
            {
                "tokens": _chat_tokens(tokenizer, prompt, system_prompt),
                "prompt": prompt,
                "answer": None if entry.get("answer") is None else str(entry["answer"]),
                "row": {"entry": entry, "answer": entry.get("answer")},
            }
        )
    return RLPromptDataset(rows)


def padded_collate_rl(batch: Sequence[Mapping[str, Any]], *_: Any, **__: Any) -> dict[str, Any]:
    """Batch prompt rows: ``{"tokens": list[list[int]], "prompt": [str], "answer": [...],
    "row": [dict]}`` (the rollout engine pads); torchtune's ``answers`` / ``text`` keys too."""
    out = {
        "tokens": [list(x["tokens"]) for x in batch],
        "prompt": [x.get("prompt", x.get("question")) for x in batch],
        "answer": [x.get("answer") for x in batch],
        "row": [x.get("row", {}) for x in batch],
    }
    out["answers"], out["text"] = out["answer"], out["prompt"]
    return out
