"""Fixtures for recipe tests: a tiny random Llama on disk, toy instruct data, config builder."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `_recipe_toys.ByteChatTokenizer` is a config component
    sys.path.insert(0, str(HERE))

from tests._device import test_device  # noqa: E402
from tests.recipes._recipe_toys import write_instruct_data, write_tiny_llama  # noqa: E402

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def instruct_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_instruct_data(tmp_path_factory.mktemp("data") / "reverse.json")


LORA = {
    "lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
    "apply_lora_to_mlp": True,
    "lora_rank": 8,
    "lora_alpha": 16,
}


def base_config(out: Path, model_dir: Path, data: Path, **over: Any) -> dict[str, Any]:
    """torchtune's finetune keys, pointing at tiny local files."""
    cfg: dict[str, Any] = {
        "output_dir": str(out),
        "model": {
            "_component_": "tunesmith.models.build_from_hf",
            "checkpoint_dir_or_config": str(model_dir),
        },
        "tokenizer": {"_component_": "_recipe_toys.ByteChatTokenizer", "max_seq_len": 256},
        "checkpointer": {
            "_component_": "tunesmith.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir),
            "checkpoint_files": ["model.safetensors"],
            "recipe_checkpoint": None,
            "output_dir": "${output_dir}",
            "model_type": "LLAMA3",
        },
        "resume_from_checkpoint": False,
        "dataset": {
            "_component_": "tunesmith.datasets.instruct_dataset",
            "source": "json",
            "data_files": str(data),
            "split": "train",
            "packed": False,
        },
        "seed": 0,
        "shuffle": True,
        "batch_size": 4,
        "epochs": 1,
        "max_steps_per_epoch": 20,
        "gradient_accumulation_steps": 1,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "loss": {"_component_": "tunesmith.modules.loss.LinearCrossEntropyLoss"},
        "clip_grad_norm": None,
        "compile": False,
        "device": str(test_device()),  # TUNESMITH_TEST_DEVICE
        "dtype": "fp32",
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "metric_logger": {
            "_component_": "tunesmith.training.metric_logging.DiskLogger",
            "log_dir": "${output_dir}/logs",
            "filename": "log.jsonl",
        },
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
    }
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def read_losses(out: Path) -> list[float]:
    lines = (out / "logs" / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.fixture
def run_finetune(tiny_llama: Path, instruct_data: Path, tmp_path: Path) -> Callable[..., Path]:
    """Run the finetune recipe in-process with overrides; returns its output_dir."""
    from tunesmith.recipes.finetune import recipe_main

    def run(name: str = "run", **over: Any) -> Path:
        out = tmp_path / name
        cfg: DictConfig = OmegaConf.create(base_config(out, tiny_llama, instruct_data, **over))
        recipe_main(cfg)
        return out

    return run
