"""User errors: one ``error: ...`` line and exit code 2; tracebacks only with --debug (issue 12)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from tunesmith.cli.main import main
from tunesmith.config import ConfigError, MissingDependencyError, UserError
from tunesmith.data._messages import DataRowError
from tunesmith.utils import require


def _stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNESMITH_DEBUG", raising=False)


def test_user_error_types_share_one_base() -> None:
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(DataRowError, UserError) and issubclass(DataRowError, ValueError)
    assert issubclass(MissingDependencyError, UserError)
    assert issubclass(MissingDependencyError, ImportError)


def test_config_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "no/such_config"]) == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no/such_config" in lines[0]


def test_debug_flag_and_env_show_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNESMITH_DEBUG", "0")  # restored after the test; --debug sets it
    assert main(["--debug", "cat", "no/such_config"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    monkeypatch.setenv("TUNESMITH_DEBUG", "1")
    assert main(["cat", "no/such_config"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["cp", "only-one-argument"])
    assert info.value.code == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the following arguments are required: destination")
    assert "tunesmith cp --help" in lines[0]
    with pytest.raises(SystemExit) as info:
        main(["dowload", "x/y"])
    assert info.value.code == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith("error: argument <command>: invalid choice: 'dowload'")


def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.training.metric_logging import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails like an absent package
    with pytest.raises(MissingDependencyError) as info:
        TensorBoardLogger(log_dir="unused")
    message = str(info.value)
    assert "\n" not in message
    assert "tensorboard is not installed (TensorBoardLogger needs it)" in message
    assert "pip install 'tunesmith[tensorboard]'" in message
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError, match=r"tunesmith\[wandb\]"):
        require("wandb")


def test_third_party_start_up_noise_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from tunesmith.cli._noise import quiet_third_party

    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    for name in ("torchao", "torch.utils._pytree"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    quiet_third_party()
    assert not logging.getLogger("torchao").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("torch.utils._pytree").isEnabledFor(logging.WARNING)
    assert logging.getLogger("tunesmith").isEnabledFor(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("old api", FutureWarning, "x.py", 1, module="torchao.quantization")
        warnings.warn_explicit("mine", UserWarning, "y.py", 1, module="tunesmith.recipes")
    assert [str(w.message) for w in caught] == ["mine"]


def test_recipe_file_run_as_a_script_gives_one_line(tmp_path: Path) -> None:
    """``python finetune.py --config ...`` (what torchrun runs by hand): the same checks and
    one line as ``tunesmith run``, exit 2."""
    import subprocess

    import tunesmith.recipes.finetune as finetune

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("output_dir: out\nepochs: 1\nbatch_size: 2\n")
    result = subprocess.run(
        [sys.executable, finetune.__file__, "--config", str(cfg), "batch_sise=2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [
        "error: unknown config key 'batch_sise' for recipe finetune (override batch_sise=2): "
        "did you mean batch_size? Fix the name, or move a deliberate extra under 'extra:'"
    ]
