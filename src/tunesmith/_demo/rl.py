"""A procedurally generated verifiable task for the GRPO demo (``smollm2/135M_grpo_demo``):
small additions and subtractions whose answer is checked exactly.

``arithmetic_dataset`` writes the prompts to the cache once (seeded, so every run sees the same
rows) and reads them with ``rl_prompt_dataset``; ``NumberAnswerReward`` scores a completion 1
when its last number is the answer, ``ShortAnswerReward`` 1 when the completion is the bare
number (the prompt asks for just that), so the format and the arithmetic both improve.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from tunesmith._demo.components import CACHE_DIR

__all__ = ["arithmetic_dataset", "NumberAnswerReward", "ShortAnswerReward"]

_NUMBER = re.compile(r"-?\d+")


def arithmetic_rows(n: int, seed: int, max_operand: int, ops: str = "+-") -> list[dict[str, str]]:
    """``n`` rows ``{question, answer}``: ``a <op> b`` for ``op`` in ``ops`` (``+``, ``-``),
    ``0 <= a, b <= max_operand``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice(ops)
        value = a + b if op == "+" else a - b
        rows.append(
            {"question": f"What is {a} {op} {b}? Reply with only the number.", "answer": str(value)}
        )
    return rows


def arithmetic_dataset(
    tokenizer: Any,
    n: int = 512,
    seed: int = 0,
    max_operand: int = 20,
    ops: str = "+-",
    **kwargs: Any,
) -> Any:
    """The arithmetic prompts as a prompt dataset (``tokens``, ``prompt``, ``answer``, ``row``)."""
    from tunesmith.datasets import rl_prompt_dataset

    path = (
        CACHE_DIR / "demo_data" / f"arithmetic_{n}_{seed}_{max_operand}_{ops.encode().hex()}.json"
    )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(arithmetic_rows(n, seed, max_operand, ops)))
        tmp.replace(path)
    return rl_prompt_dataset(
        tokenizer,
        source="json",
        data_files=str(path),
        split="train",
        column="question",
        answer_column="answer",
        **kwargs,
    )


class NumberAnswerReward:
    """1.0 when the completion's last integer equals ``row["answer"]`` ("3 + 4 = 7"), else 0.0."""

    name = "correct"

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        out = []
        for text, row in zip(completions, rows):
            found = _NUMBER.findall(text)
            out.append(float(bool(found) and found[-1] == str(row["answer"]).strip()))
        return out


class ShortAnswerReward:
    """1.0 when the completion is just an integer (whitespace and a final period allowed)."""

    name = "bare_number"

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
        return [float(bool(re.fullmatch(r"\s*-?\d+\.?\s*", t))) for t in completions]
