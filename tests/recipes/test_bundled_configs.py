"""Bundled configs: torchtune's names, a recipe header, components that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunesmith.config import load_config, resolve_component
from tunesmith.configs._generate import render_all

CONFIG_DIR = Path(__file__).resolve().parents[2] / "src" / "tunesmith" / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml"))


def _components(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["_component_"]] if "_component_" in node else []
        return found + [c for v in node.values() for c in _components(v)]
    if isinstance(node, list):
        return [c for v in node for c in _components(v)]
    return []


def test_committed_configs_are_the_generated_ones() -> None:
    """The finetune/generation configs of the table are committed as generated (other recipes'
    configs live beside them, written by hand)."""
    for rel, text in render_all().items():
        path = CONFIG_DIR / rel
        assert path.is_file() and path.read_text() == text, (
            f"{rel} differs: run python -m tunesmith.configs._generate and commit"
        )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads_and_components_resolve(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# recipe: "), f"{path}: first line must be '# recipe: <name>'"
    load_config(path)
    for component in _components(yaml.safe_load(path.read_text())):
        if component.startswith("bitsandbytes."):  # optional extra (tunesmith[bnb])
            continue
        assert callable(resolve_component(component)), component


def test_torchtune_sample_configs_have_bundled_twins(assets: Path) -> None:
    """Every torchtune sample config has a bundled config of the same name and keys."""
    samples = sorted((assets / "torchtune_configs_sample").rglob("*.yaml"))
    assert samples
    for sample in samples:
        rel = sample.relative_to(assets / "torchtune_configs_sample")
        ours = CONFIG_DIR / rel
        assert ours.is_file(), f"no bundled config {rel}"
        theirs, mine = yaml.safe_load(sample.read_text()), yaml.safe_load(ours.read_text())
        assert (
            mine["model"]["_component_"].split(".")[-1]
            == theirs["model"]["_component_"].split(".")[-1]
        )
        assert mine["checkpointer"]["model_type"] == theirs["checkpointer"]["model_type"]
        training_keys = {
            "batch_size",
            "epochs",
            "optimizer",
            "loss",
            "gradient_accumulation_steps",
            "dtype",
        }
        assert training_keys <= set(mine), rel


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_passes_tunesmith_validate(path: Path) -> None:
    """What ``tunesmith validate <config>`` checks, with no error: components and their
    arguments, and (the recipe known from the header) no key the recipe does not read."""
    from tunesmith.cli._validate import config_recipe
    from tunesmith.config import validate_config
    from tunesmith.recipes._checks import config_problems
    from tunesmith.recipes._config_keys import SUPPLIED

    cfg = load_config(path)
    recipe = config_recipe(path, None)
    assert recipe is not None, f"{path}: its '# recipe:' header names no registered recipe"
    problems = validate_config(cfg, SUPPLIED) + config_problems(cfg, recipe, [], path)
    errors = [str(p) for p in problems if p.severity == "error"]
    # an optional extra (bitsandbytes, wandb, ...) not installed here is no config error
    errors = [e for e in errors if "pip install 'tunesmith[" not in e]
    assert not errors, errors
