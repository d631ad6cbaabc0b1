"""A toy verifiable task for the grpo recipe tests: the answer column lists the allowed
letters, and the reward is the fraction of the completion's characters that are allowed.
A tiny random model emits them a few percent of the time, so each group of samples differs in
reward from the first step, and GRPO raises the mean reward within a few dozen steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def write_prompt_data(path: Path, n: int = 64, drop_answer: bool = False) -> Path:
    """Rows ``{question, answer}``; ``answer`` holds the allowed characters (lowercase letters)."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"question": f"Write letters {i % 16}", "answer": LETTERS}
        if drop_answer:
            del row["answer"]
        rows.append(row)
    path.write_text(json.dumps(rows))
    return path


class AllowedCharsReward:
    """``fraction of the completion's characters in row['answer']`` (0 for an empty one)."""

    def __init__(self, name: str = "allowed_chars") -> None:
        self.name = name

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        out = []
        for text, row in zip(completions, rows):
            allowed = set(row["answer"])
            out.append(sum(ch in allowed for ch in text) / len(text) if text else 0.0)
        return out


class BrokenReward:
    """A reward function with a bug: raises (``mode="raise"``) or returns NaN."""

    def __init__(self, mode: str = "raise", name: str = "broken") -> None:
        self.mode, self.name = mode, name

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        if self.mode == "raise":
            raise KeyError("no_such_column")
        return [math.nan for _ in completions]
