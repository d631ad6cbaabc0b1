"""The `tunesmith` command: help, ls, cp, cat, run (single process and torchrun), validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli.main import main
from tunesmith.config import _bundled
from tunesmith.recipes import _registry
from tunesmith.recipes._registry import Recipe

LORA_CONFIG = """\
# recipe: lora_finetune_single_device
output_dir: /tmp/unused
optimizer:
  _component_: torch.optim.SGD
  lr: 0.1
"""

RECIPE = """\
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from tunesmith.config import parse_recipe_args


def recipe_main(cfg):
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"lr": OmegaConf.select(cfg, "optimizer.lr"), "world": os.environ.get("WORLD_SIZE"), "extra": OmegaConf.to_container(cfg).get("extra")}
    (out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    recipe_main(parse_recipe_args())
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Test configs on TUNESMITH_CONFIG_PATH and a registry with one fake recipe file."""
    configs = tmp_path / "configs"
    (configs / "tiny").mkdir(parents=True)
    (configs / "tiny" / "lora.yaml").write_text(LORA_CONFIG)
    (configs / "tiny" / "dpo.yaml").write_text("# recipe: dpo\nseed: 1\n")
    monkeypatch.setenv("TUNESMITH_CONFIG_PATH", str(configs))
    monkeypatch.setattr(_bundled, "CONFIGS_DIR", tmp_path / "no_bundled_configs")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "ts_fake_recipe.py").write_text(RECIPE)
    monkeypatch.syspath_prepend(str(recipes))
    monkeypatch.setattr(_registry, "RECIPES_DIR", recipes)
    fake = (
        Recipe(
            "finetune",
            "ts_fake_recipe",
            ("lora_finetune_single_device", "full_finetune_distributed"),
            True,
        ),
        Recipe("generate", "ts_fake_recipe", ("generate",), False),
        Recipe("ghost", "tunesmith.recipes.ghost", ("ghost_alias",), False),
    )
    monkeypatch.setattr(_registry, "RECIPES", fake)
    return tmp_path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from tunesmith.cli.main import main\n"
        "main(['ls'])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("ls", "cp", "cat", "run", "validate", "download", "upload"):
        assert f"    {command} " in result.stdout
    assert "TORCH False" in result.stdout


def test_python_dash_m_tunesmith_is_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", "ls"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "llama3_2/1B_lora_single_device" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tunesmith", "cat", "no/such_config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "no/such_config" in bad.stderr + bad.stdout


@pytest.mark.parametrize("command", ["ls", "cp", "cat", "validate", "download", "upload"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: tunesmith {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["--help"], ["finetune", "--help"], ["finetune", "--config", "x", "-h"]]
)
def test_run_help_shows_torchrun_options(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "run", *argv)
    assert code == 0
    assert "usage: tunesmith run [torchrun options] <recipe>" in out
    assert "--nproc-per-node NPROC_PER_NODE, --nproc_per_node NPROC_PER_NODE" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys)
    assert code == 1 and out.startswith("usage: tunesmith")


def test_ls_table(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["RECIPE", "ALIASES", "CONFIGS"]
    assert lines[1].split() == ["finetune", "lora_finetune_single_device", "tiny/lora"]
    assert lines[2].split() == ["full_finetune_distributed"]
    assert lines[3].split() == ["generate", "generate", "-"]
    assert lines[4].split() == ["ghost", "(not", "installed)", "ghost_alias", "-"]
    assert lines[5].split() == ["dpo", "(unknown", "recipe)", "-", "tiny/dpo"]
    assert lines[1].index("lora_finetune") == lines[2].index("full_finetune")  # aligned columns


def test_cp_config_and_recipe(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = env / "out" / "my_config"
    code, _, err = run_cli(capsys, "cp", "tiny/lora", str(dest))
    assert code == 2 and f"folder {dest.parent} does not exist; pass --make-parents" in err
    code, out, _ = run_cli(capsys, "cp", "tiny/lora", str(dest), "--make-parents")
    assert code == 0 and out.strip() == f"Copied config tiny/lora to {dest}.yaml"
    assert Path(f"{dest}.yaml").read_text() == LORA_CONFIG
    code, _, err = run_cli(capsys, "cp", "tiny/lora", str(dest))
    assert code == 2 and "already exists; pass --force to overwrite it" in err
    Path(f"{dest}.yaml").write_text("edited")
    assert run_cli(capsys, "cp", "tiny/lora", str(dest), "--force")[0] == 0
    assert Path(f"{dest}.yaml").read_text() == LORA_CONFIG
    code, out, _ = run_cli(capsys, "cp", "lora_finetune_single_device", str(env / "out"))
    assert code == 0 and (env / "out" / "ts_fake_recipe.py").read_text() == RECIPE
    code, _, err = run_cli(capsys, "cp", "ghost", str(env / "out"))
    assert code == 2 and "recipe 'ghost' (tunesmith.recipes.ghost) is not installed" in err
    code, _, err = run_cli(capsys, "cp", "tiny/lorra", str(env / "x.yaml"))
    assert (
        code == 2
        and "'tiny/lorra' is neither a recipe nor a config" in err
        and "Did you mean tiny/lora" in err
    )


def test_cat_raw_and_with_overrides(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "cat", "tiny/lora")
    assert code == 0 and out == LORA_CONFIG
    code, out, _ = run_cli(capsys, "cat", "tiny/lora", "optimizer.lr=0.5", "~output_dir", "seed=7")
    assert code == 0
    assert out == "optimizer:\n  _component_: torch.optim.SGD\n  lr: 0.5\nseed: 7\n"
    code, _, err = run_cli(capsys, "cat", "tiny/lora", "optimizer.lr=fast")
    assert code == 2 and "optimizer.lr expects a number" in err
    code, _, err = run_cli(capsys, "cat", "tiny/nothing")
    assert code == 2 and "config 'tiny/nothing' not found" in err


def test_validate(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", "tiny/lora")
    assert code == 0
    assert "warning" not in out  # optimizer.params: the recipe passes it
    assert out.strip().endswith("tiny/lora.yaml: config is valid for recipe finetune")
    code, out, err = run_cli(
        capsys,
        "validate",
        "tiny/lora",
        "optimizer.lrr=1",
        "loss._component_=torch.nn.MSELos",
        "loss.reduce=x",
    )
    assert code == 2
    assert "error: optimizer.lrr: torch.optim.SGD has no argument 'lrr'. Did you mean lr?" in err
    assert "error: loss._component_: cannot resolve _component_ 'torch.nn.MSELos'" in err
    assert "Did you mean torch.nn.MSELoss" in err
    assert "2 problem(s) found" in out


def test_run_single_process(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = env / "run1"
    code, _, err = run_cli(
        capsys,
        "run",
        "lora_finetune_single_device",
        "--config",
        "tiny/lora",
        f"output_dir={out}",
        "optimizer.lr=0.5",
    )
    assert code == 0, err
    assert json.loads((out / "rank0.json").read_text()) == {"lr": 0.5, "world": None, "extra": None}
    recipe_file = env / "recipes" / "ts_fake_recipe.py"
    config_file = env / "configs" / "tiny" / "lora.yaml"
    out2 = env / "run2"
    code, _, err = run_cli(
        capsys,
        "run",
        str(recipe_file),
        "--config",
        str(config_file),
        f"output_dir={out2}",
        "+extra=[1,2]",
    )
    assert code == 0, err
    assert json.loads((out2 / "rank0.json").read_text())["extra"] == [1, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["ghost", "--config", "tiny/lora"],
            "recipe 'ghost' maps to tunesmith.recipes.ghost, which is not installed",
        ),
        (["finetun", "--config", "tiny/lora"], "unknown recipe 'finetun'. Did you mean finetune"),
        (["./nope.py", "--config", "tiny/lora"], "recipe file nope.py not found"),
        (["finetune"], "no config given: pass --config <name|path>"),
        (
            ["finetune", "--config", "tiny/lora", "optimizer.lr"],
            "override 'optimizer.lr' has no '='",
        ),
        (
            ["--nproc_per_node", "2", "generate", "--config", "tiny/lora"],
            "recipe 'generate' runs in a single process",
        ),
        (
            ["finetune", "--config", "tiny/lora", "--nproc_per_node=2"],
            "torchrun option '--nproc_per_node' must come before the recipe",
        ),
    ],
)
def test_run_errors(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "run", *argv)
    assert code == 2
    assert message in err


def test_run_distributed_through_torchrun(env: Path) -> None:
    out = env / "dist"
    result = subprocess.run(
        [
            sys.executable, "-m", "tunesmith.cli", "run", "--standalone", "--nproc_per_node", "2",
            str(env / "recipes" / "ts_fake_recipe.py"), "--config", str(env / "configs" / "tiny" / "lora.yaml"),
            f"output_dir={out}", "optimizer.lr=0.25",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert json.loads((out / f"rank{rank}.json").read_text()) == {
            "lr": 0.25,
            "world": "2",
            "extra": None,
        }


def test_cat_of_a_recipe_points_to_cp(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "cat", "finetune")
    assert (
        code == 2
        and "'finetune' is a recipe, not a config" in err
        and "tunesmith cp finetune" in err
    )


def test_run_reports_config_errors_from_the_recipe_in_one_line(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = env / "bad_recipe.py"
    recipe.write_text(
        "from tunesmith.config import instantiate\n"
        "def recipe_main(cfg):\n"
        "    instantiate(cfg.optimizer, [])\n"
    )
    code, _, err = run_cli(
        capsys, "run", str(recipe), "--config", "tiny/lora", "optimizer.momentm=0.9"
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: optimizer.momentm: torch.optim.SGD has no argument 'momentm'. Did you mean momentum? "
        "Valid arguments: params, lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, "
        "differentiable, fused. Rename or remove the key."
    ]


def test_run_warns_when_config_declares_another_recipe(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "run", "generate", "--config", "tiny/dpo", f"output_dir={env / 'g'}"
    )
    assert code == 0
    assert "dpo.yaml declares '# recipe: dpo' but runs with 'generate'" in err
    # a config for another recipe usually holds keys this one does not read: one line, exit 2
    code, _, err = run_cli(
        capsys, "run", "generate", "--config", "tiny/lora", f"output_dir={env / 'g'}"
    )
    assert code == 2 and "unknown config key 'optimizer' for recipe generate (lora.yaml)" in err


def test_torchrun_user_error_is_one_line_and_exit_2(env: Path) -> None:
    """A user error in the ranks is rank 0's one line, not torchrun's ChildFailedError dump.

    The recipe file has no ``__main__`` block: the ranks run tunesmith's own launcher.
    """
    recipe = env / "no_main.py"
    recipe.write_text(
        "from tunesmith.config import ConfigError\n"
        "def recipe_main(cfg):\n"
        "    raise ConfigError('batch_size must be at least 1 (batch_size=0): set batch_size=1')\n"
    )
    result = subprocess.run(
        [
            sys.executable, "-m", "tunesmith.cli", "run", "--standalone", "--nproc_per_node", "2",
            str(recipe), "--config", str(env / "configs" / "tiny" / "lora.yaml"),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: batch_size must be at least 1 (batch_size=0): set batch_size=1"], (
        result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
