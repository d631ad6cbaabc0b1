"""RL prompt datasets: GSM8K (torchtune main's prompt, local files), generic prompts,
reasoning-gym tasks, the collate function, and errors naming key, file and row."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from tests.datasets.byte_tokenizer import ByteTokenizer
from tunesmith.config._components import resolve_component
from tunesmith.data._errors import DataError
from tunesmith.datasets import (
    gsm8k_dataset,
    gsm8k_sft,
    padded_collate_rl,
    reasoning_gym_dataset,
    rl_prompt_dataset,
)
from tunesmith.rlhf.rewards import ReasoningGymReward

MIRROR = Path("/work/.mirror/pytorch+torchtune/repo")
GSM = [
    {"question": "What is 2+3?", "answer": "Add them: 2+3=5.\n#### 5"},
    {"question": "What is 10-4?", "answer": "Subtract.\n#### 6"},
    {"question": "Half of 8?", "answer": "8/2=4\n#### 4"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _torchtune_constant(path: str, name: str) -> str:
    if not MIRROR.exists():
        pytest.skip(f"needs the torchtune mirror at {MIRROR}")
    src = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{path}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not in {path}")


def test_gsm8k_dataset_matches_torchtune_prompt(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    files = _jsonl(tmp_path / "gsm.jsonl", GSM)
    ds = resolve_component("torchtune.dev.grpo.gsm8k.gsm8k_dataset")(
        tok, source="json", data_files=str(files)
    )
    base = _torchtune_constant("torchtune/dev/rl/data.py", "BASE_PROMPT")
    assert len(ds) == 3
    for row, src in zip(ds, GSM):
        question = base % src["question"]
        assert row["prompt"] == question
        assert row["tokens"] == tok.encode(question, add_eos=False)
        assert row["answer"] == src["answer"].split("#### ")[1]
        assert row["row"] == src
    # torchtune's partition filter: "start-end/total"
    part = gsm8k_dataset(tok, source="json", data_files=str(files), partition="1-1/2")
    assert [r["answer"] for r in part] == ["6"]
    chat = gsm8k_dataset(tok, source="json", data_files=str(files), chat_format=True)
    assert chat[0]["prompt"] == "What is 2+3?" and chat[0]["tokens"][0] == tok.bos_id


def test_gsm8k_sft_masks_the_preamble(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    files = _jsonl(tmp_path / "gsm.jsonl", GSM)
    ds = resolve_component("torchtune.dev.rl.gsm8k.gsm8k_sft")(
        tok, source="json", data_files=str(files)
    )
    assert resolve_component("torchtune.dev.grpo.gsm8k.gsm8k_sft") is gsm8k_sft
    preamble = _torchtune_constant("torchtune/dev/rl/gsm8k.py", "PREAMBLE_PROMPT")
    trainable = _torchtune_constant("torchtune/dev/rl/gsm8k.py", "TRAINABLE_PROMPT")
    pre = tok.encode(preamble.format(question=GSM[0]["question"]), add_eos=False)
    cot, answer = GSM[0]["answer"].split("#### ")
    trained = tok.encode(trainable.format(cot=cot, answer=answer), add_bos=False)
    assert ds[0]["tokens"] == pre + trained
    assert ds[0]["labels"] == [-100] * len(pre) + trained
    assert ds.max_token_id() == max(max(r["tokens"]) for r in ds)


def test_rl_prompt_dataset_and_collate(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    rows = [{"q": "hi", "a": "1"}, {"q": "there", "a": "2"}]
    files = _jsonl(tmp_path / "p.jsonl", rows)
    ds = rl_prompt_dataset(tok, source="json", data_files=str(files), column="q", answer_column="a")
    assert ds[1]["prompt"] == "there" and ds[1]["answer"] == "2"
    assert ds[1]["tokens"][: 1 + len("there")] == [tok.bos_id, *tok.encode("there", False, False)]
    batch = resolve_component("torchtune.dev.grpo.data.padded_collate_rl")([ds[0], ds[1]])
    assert batch is not None and padded_collate_rl is resolve_component(
        "torchtune.dev.rl.data.padded_collate_rl"
    )
    assert batch["tokens"] == [ds[0]["tokens"], ds[1]["tokens"]]
    assert batch["answer"] == ["1", "2"] and batch["prompt"] == ["hi", "there"]
    assert batch["row"] == rows
    no_answers = rl_prompt_dataset(tok, source="json", data_files=str(files), column="q",
                                   answer_column=None)  # fmt: skip
    assert no_answers[0]["answer"] is None


def test_missing_columns_name_key_file_and_row(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    files = _jsonl(tmp_path / "p.jsonl", [{"q": "hi", "a": "1"}, {"q": "x"}])
    with pytest.raises(DataError, match=r"row 1 has no 'a' column.*p\.jsonl, row 1.*answer_column"):
        rl_prompt_dataset(tok, source="json", data_files=str(files), column="q", answer_column="a")
    with pytest.raises(DataError, match=r"no 'prompt' column.*dataset\.column") as info:
        rl_prompt_dataset(tok, source="json", data_files=str(files))
    assert info.value.key == "dataset.column"
    bad = _jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no final"}])
    with pytest.raises(DataError, match=r"####.*g\.jsonl, row 0"):
        gsm8k_dataset(tok, source="json", data_files=str(bad))
    with pytest.raises(DataError, match=r"longer than max_seq_len=2.*row 0"):
        rl_prompt_dataset(tok, source="json", data_files=str(files), column="q",
                          answer_column=None, max_seq_len=2)  # fmt: skip


def test_reasoning_gym_dataset_is_seeded_and_scorable() -> None:
    tok = ByteTokenizer()
    ds = reasoning_gym_dataset(tok, task="basic_arithmetic", size=4, seed=3)
    again = reasoning_gym_dataset(tok, task="basic_arithmetic", size=4, seed=3)
    assert [r["prompt"] for r in ds] == [r["prompt"] for r in again]
    assert len(ds) == 4 and all(r["answer"] is not None for r in ds)
    right = [f"<think>.</think><answer>{r['answer']}</answer>" for r in ds]
    scores = ReasoningGymReward()([r["prompt"] for r in ds], right, [r["row"] for r in ds])
    assert scores == [1.0] * 4
    with pytest.raises(DataError, match="no_such_task"):
        reasoning_gym_dataset(tok, task="no_such_task", size=2)
