"""The reward_model recipe on a tiny random Llama: accuracy rises on a separable toy preference
set (full and LoRA, through ``tunesmith run reward_model``), the saved folder loads in
transformers as ``LlamaForSequenceClassification`` with equal scores, and mistakes are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.recipes.conftest import HERE, LORA
from tests.recipes.test_dpo import REPO, dpo_config, read_metrics, write_preference_data
from tunesmith.config import ConfigError

STEPS = 12


def reward_config(out: Path, model_dir: Path, data: Path, **over: Any) -> dict[str, Any]:
    cfg = dpo_config(out, model_dir, data, max_steps_per_epoch=STEPS, **over)
    cfg["model"] = {"_component_": "tunesmith.modules.classifier_model", "num_classes": 1,
                    "base_model_path": "tunesmith.models.build_from_hf",
                    "checkpoint_dir_or_config": str(model_dir),
                    **{k.removeprefix("model."): v for k, v in over.items()
                       if k.startswith("model.")}}  # fmt: skip
    cfg["checkpointer"]["model_type"] = "REWARD"
    cfg["loss"] = {"_component_": "tunesmith.rlhf.reward_loss.BradleyTerryLoss"}
    cfg["optimizer"]["lr"] = over.get("optimizer.lr", 1e-3)
    return cfg


def _cli(tmp_path: Path, cfg: dict[str, Any]) -> None:
    path = tmp_path / "reward.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "reward_model", "--config", str(path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _accuracy_rises(m: dict[str, list[float]]) -> None:
    for key in ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected"):
        assert len(m[key]) == STEPS, key
    acc = m["accuracy"]
    assert sum(acc[-3:]) / 3 >= 0.9 and sum(acc[-3:]) / 3 > sum(acc[:2]) / 2, acc
    assert m["loss"][-1] < m["loss"][0] and m["margin"][-1] > 0.5


def _hf_scores_equal(tiny_llama: Path, out: Path, tmp_path: Path) -> None:
    """The saved folder is a LlamaForSequenceClassification that scores as our model does."""
    transformers = pytest.importorskip("transformers")
    from tunesmith.models import build_from_hf
    from tunesmith.modules import sequence_scores
    from tunesmith.training import FullModelHFCheckpointer

    config = json.loads((out / "epoch_1" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_labels"] == 1
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out / "epoch_1").eval()
    state = FullModelHFCheckpointer(out / "epoch_1", ["model.safetensors"], "REWARD",
                                    tmp_path / "reload").load_checkpoint()  # fmt: skip
    ours = build_from_hf(out / "epoch_1").eval()
    ours.load_state_dict(state["model"])
    texts = [b"user: Reverse and shout: apple\nassistant: ELPPA", b"user: Reverse: apple\nzz"]
    with torch.no_grad():
        for text in texts:  # one row at a time: transformers pools at the last token
            tokens = torch.tensor([[257, *text]])
            got = sequence_scores(ours, tokens)
            assert (hf(tokens).logits - got).abs().max() <= 1e-5
        assert (hf(tokens).logits.abs() > 1e-3).all()  # a trained, non-trivial score


def test_cli_full_reward_model_learns_and_loads_in_transformers(
    tiny_llama: Path, tmp_path: Path
) -> None:
    data = write_preference_data(tmp_path / "pairs.json", n=96)
    out = tmp_path / "full"
    _cli(tmp_path, reward_config(out, tiny_llama, data))
    _accuracy_rises(read_metrics(out))
    _hf_scores_equal(tiny_llama, out, tmp_path)


def test_lora_reward_model_learns_with_trainable_head(tiny_llama: Path, tmp_path: Path) -> None:
    from tunesmith.recipes.reward_model import recipe_main

    data = write_preference_data(tmp_path / "pairs.json", n=96)
    out = tmp_path / "lora"
    over = {f"model.{k}": v for k, v in LORA.items()}
    recipe_main(OmegaConf.create(reward_config(out, tiny_llama, data, **over,
                                               **{"optimizer.lr": 1e-2})))  # fmt: skip
    _accuracy_rises(read_metrics(out))
    _hf_scores_equal(tiny_llama, out, tmp_path)


def test_reward_model_mistakes_are_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    from tunesmith.recipes.reward_model import recipe_main

    data = write_preference_data(tmp_path / "pairs.json", n=8)
    cfg = reward_config(tmp_path / "a", tiny_llama, data)
    cfg["model"]["num_classes"] = 3
    with pytest.raises(ConfigError, match="one-output reward head"):
        recipe_main(OmegaConf.create(cfg))
    cfg = reward_config(tmp_path / "b", tiny_llama, data)
    cfg["checkpointer"]["model_type"] = "LLAMA3"
    with pytest.raises(ConfigError, match="model_type=REWARD"):
        recipe_main(OmegaConf.create(cfg))
    lora = {f"model.{k}": v for k, v in LORA.items()}
    cfg = reward_config(tmp_path / "d", tiny_llama, data, save_adapter_weights_only=True, **lora)
    with pytest.raises(ConfigError, match="save_adapter_weights_only"):
        recipe_main(OmegaConf.create(cfg))
    cfg = reward_config(tmp_path / "c", tiny_llama, data)
    cfg["loss"] = {"_component_": "tunesmith.rlhf.loss.DPOLoss"}
    with pytest.raises(ConfigError, match="loss._component_"):
        recipe_main(OmegaConf.create(cfg))


@pytest.mark.parametrize("config", ["llama3_2/1B_lora_reward_model", "llama3_2/1B_reward_model"])
def test_bundled_reward_config_runs(assets: Path, tmp_path: Path, config: str) -> None:
    """The bundled config on the StackExchange sample; overridden: paths, device, steps, batch
    size and the model size (a 2-layer tied Llama 3.2 instead of the 1B download)."""
    from tests.recipes._recipe_toys import write_tiny_llama

    model_dir = write_tiny_llama(tmp_path / "llama_tiny", vocab_size=128256, tied=True)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "reward_model", "--config", config,
         f"output_dir={out}", "model.base_model_path=tunesmith.models.build_from_hf",
         f"+model.checkpoint_dir_or_config={model_dir}",
         f"tokenizer.path={assets / 'torchtune_tests' / 'tiktoken_small.model'}",
         "tokenizer.max_seq_len=512", f"checkpointer.checkpoint_dir={model_dir}",
         "checkpointer.checkpoint_files=[model.safetensors]", "+dataset.source=json",
         f"+dataset.data_files={assets / 'torchtune_tests' / 'stack_exchange_paired_tiny.json'}",
         "device=cpu", "dtype=fp32", "max_steps_per_epoch=2", "batch_size=2",
         "gradient_accumulation_steps=1", "optimizer.fused=False",
         "+metric_logger.filename=log.jsonl"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    m = read_metrics(out)
    assert len(m["loss"]) == 2 and len(m["accuracy"]) == 2
    config_json = json.loads((out / "epoch_1" / "config.json").read_text())
    assert config_json["architectures"] == ["LlamaForSequenceClassification"]


@pytest.mark.slow
def test_torchrun_two_processes_match_single(tiny_llama: Path, tmp_path: Path) -> None:
    """2 ranks x batch 2 (FSDP2) == 1 process x batch 4: the same metrics every step."""
    data = write_preference_data(tmp_path / "pairs.json", n=48)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    for name, nproc, batch in (("single", 1, 4), ("dist", 2, 2)):
        cfg = reward_config(tmp_path / name, tiny_llama, data, batch_size=batch, shuffle=False)
        cfg["max_steps_per_epoch"] = 3
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        launch = ["--nproc_per_node", str(nproc)] if nproc > 1 else []
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", *launch, "reward_model", "--config",
             str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    single, dist = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dist")
    for key in ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected"):
        assert dist[key] == pytest.approx(single[key], rel=1e-4, abs=1e-4), key


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_resume_continues_the_same_curve(tiny_llama: Path, tmp_path: Path, lora: bool) -> None:
    """Cut after step 3's intermediate checkpoint and resumed == one uninterrupted run."""
    import shutil

    from tunesmith.recipes.reward_model import recipe_main

    data = write_preference_data(tmp_path / "pairs.json", n=48)
    over: dict[str, Any] = {"save_every_n_steps": 3}
    if lora:
        over.update({f"model.{k}": v for k, v in LORA.items()})

    def run(name: str, **more: Any) -> Path:
        cfg = reward_config(tmp_path / name, tiny_llama, data, **over, **more)
        cfg["max_steps_per_epoch"] = 6
        recipe_main(OmegaConf.create(cfg))
        return tmp_path / name

    whole = read_metrics(run("whole"))
    out = run("cut")
    shutil.rmtree(out / "epoch_1")
    (out / "logs" / "log.jsonl").unlink()
    run("cut", resume_from_checkpoint=True)
    again = read_metrics(out)
    for key in ("loss", "accuracy", "margin"):
        assert again[key] == pytest.approx(whole[key][3:], abs=1e-5), key


def test_cli_mistake_is_one_line_exit_2(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_preference_data(tmp_path / "pairs.json", n=8)
    cfg = reward_config(tmp_path / "out", tiny_llama, data)
    cfg["checkpointer"]["model_type"] = "LLAMA3"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "reward_model", "--config", str(path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpointer.model_type" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
