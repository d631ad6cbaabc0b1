"""torchtune's own configs (../shared/assets/torchtune_configs_sample) load and validate unchanged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tunesmith.config import load_config, read_recipe_header, validate_config
from tunesmith.config._components import OPTIONAL_EXTRAS
from tunesmith.recipes._registry import find_recipe


def _sample_configs(assets: Path) -> list[Path]:
    configs = sorted((assets / "torchtune_configs_sample").rglob("*.yaml"))
    assert configs, "torchtune_configs_sample holds no configs"
    return configs


def test_torchtune_configs_validate_unchanged(assets: Path) -> None:
    failures: list[str] = []
    for path in _sample_configs(assets):
        for problem in validate_config(load_config(path)):
            if problem.severity != "error":
                continue
            missing_extra = any(
                f"'{pkg}' is an optional dependency" in problem.message
                and importlib.util.find_spec(pkg) is None
                for pkg in OPTIONAL_EXTRAS
            )
            if not missing_extra:
                failures.append(f"{path.relative_to(assets)}: {problem}")
    assert failures == []


def test_torchtune_config_headers_name_registered_recipes(assets: Path) -> None:
    for path in _sample_configs(assets):
        declared = read_recipe_header(path)
        assert declared is not None, f"{path.name}: no `tune run <recipe>` line found"
        recipe = find_recipe(declared)
        assert recipe is not None and recipe.name == "finetune", (path, declared)


def test_torchtune_config_cli_validate(assets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunesmith.cli.main import main

    path = assets / "torchtune_configs_sample" / "llama3_2" / "1B_lora_single_device.yaml"
    code = main(["validate", str(path), "model.lora_rank=8", "optimizer.lr=1e-4"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().endswith(f"{path}: config is valid for recipe finetune")
    # dataset.tokenizer, optimizer.params, lr_scheduler.optimizer/num_training_steps: the
    # recipe passes them, so they draw no warning
    assert "warning" not in out, out
