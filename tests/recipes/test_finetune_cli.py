"""The finetune recipe through the CLI: torchtune configs unchanged, torchrun with 2 processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.recipes.conftest import HERE, LORA, base_config, read_losses

REPO = HERE.parents[1]
TUNESMITH = [sys.executable, "-m", "tunesmith.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*TUNESMITH, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_torchtune_config_runs_unchanged(assets: Path, tmp_path: Path) -> None:
    """torchtune's llama3_2/1B_lora_single_device.yaml as shipped; overridden: paths, the device,
    the step budget, and the model size (a 2-layer Llama 3.2 instead of the 1B download)."""
    from tests.recipes._recipe_toys import write_tiny_llama

    model_dir = write_tiny_llama(tmp_path / "llama3_2_tiny", vocab_size=128256, tied=True)
    config = assets / "torchtune_configs_sample" / "llama3_2" / "1B_lora_single_device.yaml"
    out = tmp_path / "out"
    _run(
        [
            "run", "lora_finetune_single_device", "--config", str(config),
            f"output_dir={out}",
            "model._component_=tunesmith.models.build_from_hf",
            f"model.checkpoint_dir_or_config={model_dir}",
            f"tokenizer.path={assets / 'torchtune_tests' / 'tiktoken_small.model'}",
            "tokenizer.max_seq_len=256",
            f"checkpointer.checkpoint_dir={model_dir}",
            "dataset.source=json",
            f"dataset.data_files={assets / 'torchtune_tests' / 'alpaca_tiny.json'}",
            "dataset.split=train",
            "device=cpu", "max_steps_per_epoch=2",
            "metric_logger.filename=log.jsonl",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    losses = read_losses(out)
    # the config's 100 warmup steps keep the lr near 0 here: check the run, not the learning
    assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()
    assert (out / "epoch_1" / "model.safetensors").is_file()
    assert (out / "epoch_1" / "adapter" / "adapter_model.safetensors").is_file()


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_torchrun_two_processes_match_single(
    mode: str, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """2 ranks x batch 2 == 1 process x batch 4 (same global batch): losses and saved weights."""
    over = {"max_steps_per_epoch": 4, "shuffle": False, "log_every_n_steps": 1}
    if mode == "lora":
        over.update({f"model.{k}": v for k, v in LORA.items()})
    single = base_config(tmp_path / "single", tiny_llama, instruct_data, batch_size=4, **over)
    dist = base_config(tmp_path / "dist", tiny_llama, instruct_data, batch_size=2, **over)
    dist["custom_sharded_layers"] = ["tok_embeddings", "output"]  # torchtune's key
    _run(["run", "finetune", "--config", str(_write(single, tmp_path / "single.yaml"))], tmp_path)
    _run(
        [
            "run",
            "--nproc_per_node",
            "2",
            "finetune",
            "--config",
            str(_write(dist, tmp_path / "dist.yaml")),
        ],
        tmp_path,
    )
    assert read_losses(tmp_path / "dist") == pytest.approx(
        read_losses(tmp_path / "single"), abs=1e-4
    )
    a = load_file(tmp_path / "single" / "epoch_1" / "model.safetensors")
    b = load_file(tmp_path / "dist" / "epoch_1" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-4, key
    # the distributed output loads single-process and keeps training
    from omegaconf import OmegaConf

    from tunesmith.recipes.finetune import recipe_main

    again = base_config(
        tmp_path / "again", tmp_path / "dist" / "epoch_1", instruct_data, max_steps_per_epoch=2
    )
    recipe_main(OmegaConf.create(again))
    assert torch.isfinite(torch.tensor(read_losses(tmp_path / "again"))).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_torchrun_resume(mode: str, tiny_llama: Path, instruct_data: Path, tmp_path: Path) -> None:
    """2 ranks: a run resumed from its step-2 checkpoint (sharded optimizer state restored)
    logs the same losses as the uninterrupted run."""
    import shutil

    over = {"max_steps_per_epoch": 4, "save_every_n_steps": 2, "batch_size": 2}
    if mode == "lora":
        over.update({f"model.{k}": v for k, v in LORA.items()}, **{"optimizer.lr": 1e-2})
    launch = ["run", "--nproc_per_node", "2", "finetune", "--config"]
    whole = base_config(tmp_path / "whole", tiny_llama, instruct_data, **over)
    _run([*launch, str(_write(whole, tmp_path / "whole.yaml"))], tmp_path)
    cut = base_config(tmp_path / "cut", tiny_llama, instruct_data, **over)
    _run([*launch, str(_write(cut, tmp_path / "cut.yaml"))], tmp_path)
    shutil.rmtree(tmp_path / "cut" / "epoch_1")
    (tmp_path / "cut" / "logs" / "log.jsonl").unlink()
    cut["resume_from_checkpoint"] = True
    _run([*launch, str(_write(cut, tmp_path / "cut.yaml"))], tmp_path)
    expected = read_losses(tmp_path / "whole")
    assert read_losses(tmp_path / "cut") == pytest.approx(expected[2:], abs=1e-5)
