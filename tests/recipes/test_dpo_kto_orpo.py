"""KTO and ORPO through the dpo recipe on a tiny random Llama: both lower their loss when run as
``tunesmith run dpo ...``; KTO reads TRL's unpaired format or splits preference pairs, and
its batches carry the mismatched KL rows TRL builds."""

from __future__ import annotations

import json
import math
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
from tests.recipes.test_dpo import REPO, WORDS, dpo_config, read_metrics, write_preference_data
from tunesmith.config import ConfigError

KTO = {"_component_": "tunesmith.rlhf.loss.KTOLoss", "beta": 0.1}
ORPO = {"_component_": "tunesmith.rlhf.loss.ORPOLoss", "beta": 0.1}


def write_unpaired_data(path: Path, n: int = 64) -> Path:
    """TRL's unpaired format: the reversed upper-cased word is desirable, the echo is not."""
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)] + WORDS[(i * 5) % len(WORDS)][: 1 + i % 2]
        good = i % 2 == 0
        rows.append({"prompt": f"Reverse and shout: {w}",
                     "completion": w[::-1].upper() if good else w, "label": good})  # fmt: skip
    path.write_text(json.dumps(rows))
    return path


def _cli(tmp_path: Path, name: str, cfg: dict[str, Any]) -> dict[str, list[float]]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "dpo", "--config", str(path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return read_metrics(Path(cfg["output_dir"]))


def _falls(values: list[float], steps: int) -> None:
    assert len(values) == steps and all(math.isfinite(x) for x in values)
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3, values


def test_cli_lora_kto_from_pairs_lowers_loss(tiny_llama: Path, tmp_path: Path) -> None:
    """``tunesmith run dpo`` with KTOLoss on a paired dataset: each pair becomes a desirable and
    an undesirable row; the loss starts at 1/2 (policy == reference, KL 0) and falls."""
    data = write_preference_data(tmp_path / "pairs.json", n=64)
    over = {f"model.{k}": v for k, v in LORA.items()}
    cfg = dpo_config(tmp_path / "kto", tiny_llama, data, loss=KTO, max_steps_per_epoch=10,
                     **{"optimizer.lr": 1e-2}, **over)  # fmt: skip
    m = _cli(tmp_path, "kto", cfg)
    assert m["loss"][0] == pytest.approx(0.5, abs=1e-5) and m["kl"][0] == pytest.approx(0, abs=1e-6)
    _falls(m["loss"], 10)
    assert m["rewards/margins"][-1] > 0
    for key in ("rewards/chosen", "rewards/rejected", "log_probs/chosen", "log_probs/rejected"):
        assert len(m[key]) == 10, key


def test_cli_orpo_lowers_loss_without_reference(tiny_llama: Path, tmp_path: Path) -> None:
    """ORPO (full fine-tune): no reference model is built; NLL and odds-ratio terms logged."""
    data = write_preference_data(tmp_path / "pairs.json", n=64)
    cfg = dpo_config(tmp_path / "orpo", tiny_llama, data, loss=ORPO, max_steps_per_epoch=10,
                     **{"optimizer.lr": 1e-3})  # fmt: skip
    m = _cli(tmp_path, "orpo", cfg)
    _falls(m["loss"], 10)
    assert m["nll_loss"][-1] < m["nll_loss"][0]
    assert m["log_odds_chosen"][-1] > m["log_odds_chosen"][0]
    # loss = nll - beta * log_odds_ratio, step by step
    for loss, nll, ratio in zip(m["loss"], m["nll_loss"], m["log_odds_ratio"]):
        assert loss == pytest.approx(nll - 0.1 * ratio, rel=1e-5)


def test_kto_dataset_unpaired_rows_learn(tiny_llama: Path, tmp_path: Path) -> None:
    from tunesmith.recipes.dpo import recipe_main

    data = write_unpaired_data(tmp_path / "unpaired.json")
    cfg = dpo_config(tmp_path / "out", tiny_llama, data, loss={**KTO, "desirable_weight": 1.2},
                     max_steps_per_epoch=8, **{"optimizer.lr": 1e-3})  # fmt: skip
    cfg["dataset"] = {"_component_": "tunesmith.datasets.kto_dataset", "source": "json",
                      "data_files": str(data), "split": "train"}  # fmt: skip
    recipe_main(OmegaConf.create(cfg))
    m = read_metrics(tmp_path / "out")
    _falls(m["loss"], 8)


def test_kto_collate_builds_trl_mismatched_rows() -> None:
    """Row i's KL sequence = its prompt + row i-1's completion (TRL rotates by +1)."""
    from tunesmith.datasets import padded_collate_kto

    items = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4], "label": True,
              "prompt_len": 2},
             {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, -100, 8, 9], "label": False,
              "prompt_len": 3}]  # fmt: skip
    ids, labels, desirable = padded_collate_kto(items, padding_idx=0)
    assert desirable.tolist() == [True, False]
    assert ids.tolist() == [[1, 2, 3, 4, 0], [5, 6, 7, 8, 9], [1, 2, 8, 9, 0], [5, 6, 7, 3, 4]]
    assert labels[2].tolist() == [-100, -100, 8, 9, -100]
    assert labels[3].tolist() == [-100, -100, -100, 3, 4]
    ids, _, _ = padded_collate_kto(items, with_kl=False)
    assert ids.shape[0] == 2 and isinstance(ids, torch.Tensor)


def test_kto_mistakes_are_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    from tunesmith.data import DataRowError
    from tunesmith.recipes.dpo import recipe_main

    pairs = write_preference_data(tmp_path / "pairs.json", n=8)
    cfg = dpo_config(tmp_path / "a", tiny_llama, pairs, loss=KTO, batch_size=1)
    with pytest.raises(ConfigError, match="batch_size"):
        recipe_main(OmegaConf.create(cfg))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "a", "completion": "b", "label": "yes"}] * 4))
    cfg = dpo_config(tmp_path / "b", tiny_llama, bad, loss=KTO)
    cfg["dataset"] = {"_component_": "tunesmith.datasets.kto_dataset", "source": "json",
                      "data_files": str(bad), "split": "train"}  # fmt: skip
    with pytest.raises(DataRowError, match="label.*row 0|row 0.*label") as err:
        recipe_main(OmegaConf.create(cfg))
    assert "\n" not in str(err.value)
    cfg["loss"] = {"_component_": "tunesmith.rlhf.loss.DPOLoss"}  # unpaired rows, pairwise loss
    bad.write_text(json.dumps([{"prompt": "a", "completion": "b", "label": True}] * 4))
    with pytest.raises(ConfigError, match="not preference pairs"):
        recipe_main(OmegaConf.create(cfg))


@pytest.mark.slow
def test_kto_two_processes_run_and_share_the_kl_point(tiny_llama: Path, tmp_path: Path) -> None:
    """KTO under FSDP2 on 2 ranks: the KL reference point is averaged over ranks (TRL's
    gather + mean) and the loss falls as on one process."""
    data = write_preference_data(tmp_path / "pairs.json", n=64)
    over = {f"model.{k}": v for k, v in LORA.items()}
    cfg = dpo_config(tmp_path / "dist", tiny_llama, data, loss=KTO, max_steps_per_epoch=8,
                     batch_size=2, **{"optimizer.lr": 1e-2}, **over)  # fmt: skip
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "--nproc_per_node", "2", "dpo",
         "--config", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    m = read_metrics(tmp_path / "dist")
    assert m["loss"][0] == pytest.approx(0.5, abs=1e-5)
    assert all(k >= 0 for k in m["kl"]) and len(m["kl"]) == 8
    _falls(m["loss"], 8)


@pytest.mark.parametrize("config", ["llama3_2/1B_lora_kto", "llama3_2/1B_lora_orpo"])
def test_bundled_kto_orpo_configs_run(assets: Path, tmp_path: Path, config: str) -> None:
    """The bundled configs on the StackExchange sample; overridden: paths, device, steps, batch
    size and the model size (a 2-layer tied Llama 3.2 instead of the 1B download)."""
    from tests.recipes._recipe_toys import write_tiny_llama

    model_dir = write_tiny_llama(tmp_path / "llama_tiny", vocab_size=128256, tied=True)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "dpo", "--config", config,
         f"output_dir={out}", "model._component_=tunesmith.models.build_from_hf",
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
    assert len(m["loss"]) == 2 and all(math.isfinite(x) for x in m["loss"])
    assert ("kl" in m) == config.endswith("kto") and ("nll_loss" in m) == config.endswith("orpo")
