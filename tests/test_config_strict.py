"""Strict configs: unknown top-level keys are errors, numbers are range-checked (issue 12)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tunesmith.cli.main import main
from tunesmith.config import ConfigError, apply_overrides, load_config, validate_config
from tunesmith.config._ranges import RANGES, check_ranges, range_problems
from tunesmith.recipes import _registry
from tunesmith.recipes._checks import check_config, config_problems
from tunesmith.recipes._config_keys import KEYS, SUPPLIED, recipe_keys

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "src" / "tunesmith" / "recipes"
CONFIGS = sorted((ROOT / "src" / "tunesmith" / "configs").rglob("*.yaml"))
_READ = re.compile(r'cfg(?:\.get\("(\w+)"|\["(\w+)"\]|\.(?!get\b)([a-z_]\w*))|"(\w+)" in cfg\b')
# the helpers each recipe's recipe_main reaches (they read the shared training keys)
_SOURCES = {
    "finetune": [
        "finetune",
        "_finetune_setup",
        "_finetune_observe",
        "_parallel_setup",
        "_training_data",
    ],
    "qat": ["qat", "finetune", "_finetune_setup", "_finetune_observe"],
    "dpo": ["dpo", "_preference_data", "_preference_step", "_finetune_setup", "_finetune_observe"],
    "reward_model": ["reward_model", "_preference_data", "_finetune_setup", "_finetune_observe"],
    "knowledge_distillation": ["knowledge_distillation", "_finetune_setup", "_finetune_observe"],
    "grpo": ["grpo", "_rl_loop", "_finetune_setup", "_finetune_observe"],
    "ppo": ["ppo", "_ppo_steps", "_finetune_setup", "_finetune_observe"],
    "generate": ["generate"],
    "eval": ["eval"],  # + generate.load_model: model, checkpointer (declared)
    "quantize": ["quantize"],
}


def _read_keys(module: str) -> set[str]:
    text = (RECIPES / f"{module}.py").read_text()
    return {next(g for g in m.groups() if g) for m in _READ.finditer(text)}


def test_every_registered_recipe_declares_its_keys() -> None:
    assert {r.name for r in _registry.RECIPES} == set(KEYS) == set(_SOURCES)


@pytest.mark.parametrize("recipe", sorted(_SOURCES))
def test_every_key_a_recipe_reads_is_declared(recipe: str) -> None:
    read = set().union(*(_read_keys(m) for m in _SOURCES[recipe]))
    assert read, recipe
    undeclared = read - KEYS[recipe] - {"log_level"}
    if recipe == "ppo":  # ppo hands the shared setup a `model` made from policy_model etc.
        undeclared -= {"model"}
    assert not undeclared, f"{recipe} reads {sorted(undeclared)}: add them to _config_keys.KEYS"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_bundled_configs_have_only_known_keys_in_range(path: Path) -> None:
    from tunesmith.cli._validate import config_recipe

    recipe = config_recipe(path, None)
    assert recipe is not None, f"{path}: no registered recipe in its header"
    problems = config_problems(load_config(path), recipe, (), path)
    assert problems == []


def test_torchtune_configs_have_only_known_keys(assets: Path) -> None:
    from tunesmith.cli._validate import config_recipe

    samples = sorted((assets / "torchtune_configs_sample").rglob("*.yaml"))
    assert samples
    for path in samples:
        recipe = config_recipe(path, None)
        assert recipe is not None, path
        assert config_problems(load_config(path), recipe, (), path) == [], path


def _cfg(text: str):
    return OmegaConf.create(text)


def test_misspelt_keys_name_the_closest_valid_one() -> None:
    cfg = _cfg("batchsize: 2\nepochs: 1\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'batchsize' .*cfg\.yaml.*batch_size"
    ):
        check_config(cfg, "finetune", (), Path("cfg.yaml"))
    cfg = apply_overrides(_cfg("epochs: 1\n"), ["batch_sise=2"])
    with pytest.raises(ConfigError) as info:
        check_config(cfg, "finetune", ["batch_sise=2"], Path("cfg.yaml"))
    assert "(override batch_sise=2): did you mean batch_size?" in str(info.value)
    assert info.value.key == "batch_sise"
    # a key of another recipe is unknown here too
    with pytest.raises(ConfigError, match="kd_ratio"):
        check_config(_cfg("kd_ratio: 0.5\n"), "finetune")
    check_config(_cfg("kd_ratio: 0.5\n"), "knowledge_distillation")


def test_extras_and_referenced_keys_are_allowed() -> None:
    cfg = _cfg(
        "extra:\n  note: anything\n  base_lr: 1e-4\n"
        "model_dir: /models/x\n"
        "checkpointer:\n  checkpoint_dir: ${model_dir}\n"
        "optimizer:\n  lr: ${extra.base_lr}\n"
    )
    check_config(cfg, "finetune")
    assert "extra" in recipe_keys("generate")


def test_overwrite_is_a_training_key() -> None:
    for recipe in ("finetune", "dpo", "knowledge_distillation", "qat"):
        check_config(_cfg("overwrite: true\n"), recipe)


@pytest.mark.parametrize(
    "key,bad,good",
    [
        ("epochs", 0, 1),
        ("batch_size", -1, 2),
        ("gradient_accumulation_steps", 0, 4),
        ("max_steps_per_epoch", -1, None),
        ("log_every_n_steps", 0, 10),
        ("save_every_n_steps", 0, None),
        ("keep_last_n_checkpoints", 0, 2),
        ("num_workers", -1, 0),
        ("clip_grad_norm", 0, 1.0),
        ("clip_grad_norm", -1.0, None),
        ("optimizer.lr", -1e-4, 0.0),
        ("model.lora_rank", 0, 8),
        ("model.lora_alpha", 0, 16),
        ("model.lora_dropout", 1.0, 0.05),
        ("batch_size", 2.5, 2.0),
        ("epochs", "two", 3),
        ("epochs", True, 3),
        ("kd_ratio", 1.5, 0.5),
        ("top_p", 0, 0.9),
    ],
)
def test_numbers_out_of_range_name_the_key(key: str, bad: object, good: object) -> None:
    cfg = OmegaConf.create({})
    OmegaConf.update(cfg, key, bad, force_add=True)
    with pytest.raises(ConfigError) as info:
        check_ranges(cfg)
    assert str(info.value).startswith(f"{key}: must be") and info.value.key == key
    OmegaConf.update(cfg, key, good, force_add=True)
    check_ranges(cfg)


def test_every_range_rule_rejects_something() -> None:
    keys = [r.key for r in RANGES]
    assert len(keys) == len(set(keys))
    for rule in RANGES:
        assert rule.violation(-(10**12)) is not None or rule.violation("x") is not None
        cfg = OmegaConf.create({})
        OmegaConf.update(cfg, rule.key, "not a number", force_add=True)
        assert [p.key for p in range_problems(cfg)] == [rule.key]


def test_unresolvable_and_absent_keys_are_left_alone() -> None:
    assert range_problems(_cfg("epochs: ${nowhere}\n")) == []
    assert range_problems(_cfg("{}")) == []


def test_validate_knows_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# recipe: finetune\nbatchsize: 2\nepochs: 0\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: batchsize: unknown config key for recipe finetune (c.yaml): did you mean " in err
    assert "error: epochs: must be an integer >= 1, got 0" in err
    path.write_text("batchsize: 2\n")
    assert main(["validate", str(path)]) == 0  # no recipe known: a warning says so
    assert "names no recipe, so top-level keys are not checked" in capsys.readouterr().out
    assert main(["validate", str(path), "--recipe", "lora_finetune_single_device"]) == 2
    assert "batchsize" in capsys.readouterr().err


def test_validate_does_not_ask_for_what_the_recipe_passes() -> None:
    cfg = load_config(
        ROOT / "src" / "tunesmith" / "configs" / "llama3_2" / "1B_lora_single_device.yaml"
    )
    plain = {p.key for p in validate_config(cfg) if p.severity == "warning"}
    assert {"optimizer.params", "lr_scheduler.optimizer"} <= plain  # without the recipe's view
    assert [p for p in validate_config(cfg, SUPPLIED) if p.severity == "warning"] == []
