"""tunesmith.utils: dtype and device names, seeding, logging format and level, optional imports."""

from __future__ import annotations

import logging
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from tunesmith.utils import (
    LOG_FORMAT,
    configure_logging,
    get_device,
    get_dtype,
    get_logger,
    require,
    set_seed,
)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        (None, torch.float32),
        ("fp32", torch.float32),
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        (torch.float16, torch.float16),
    ],
)
def test_get_dtype(name: object, dtype: torch.dtype) -> None:
    assert get_dtype(name) is dtype


@pytest.mark.parametrize("bad", ["fp8", "int4", 16, ""])
def test_get_dtype_rejects_unknown(bad: object) -> None:
    with pytest.raises(
        ValueError, match=r"dtype: .* is not a supported dtype; use fp32, bf16 or fp16"
    ):
        get_dtype(bad)


def test_get_device() -> None:
    assert get_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert get_device(None).type in ("cpu", "mps")
        with pytest.raises(
            ValueError,
            match="device: 'cuda' asked for CUDA but no GPU is available; set device=cpu",
        ):
            get_device("cuda")
    with pytest.raises(ValueError, match="device: 'gpu0' is not a device"):
        get_device("gpu0")


def test_set_seed_makes_every_generator_repeat() -> None:
    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    assert set_seed(123) == 123
    first = draw()
    set_seed(123)
    assert draw() == first
    seed = set_seed(None)
    assert isinstance(seed, int) and 0 <= seed < 2**32
    with pytest.raises(ValueError, match="Invalid seed value provided: seed=-1 is not an int"):
        set_seed(-1)
    with pytest.raises(ValueError, match="seed='7' is not an int"):
        set_seed("7")  # type: ignore[arg-type]


def test_logger_format_and_level() -> None:
    code = (
        "from tunesmith.utils import get_logger, configure_logging\n"
        "log = get_logger('tunesmith.recipes.demo')\n"
        "log.info('shown')\n"
        "log.debug('hidden')\n"
        "configure_logging('debug')\n"
        "log.debug('now shown')\n"
        "configure_logging('ERROR')\n"
        "log.warning('hidden again')\n"
        "get_logger('__main__').error('from main')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    lines = result.stdout.strip().splitlines()  # INFO and DEBUG on stdout
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith("INFO ") and lines[0].endswith("tunesmith.recipes.demo:3] shown")
    assert lines[1].startswith("DEBUG ") and lines[1].endswith("] now shown")
    errors = result.stderr.strip().splitlines()  # WARNING and above on stderr
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("ERROR ") and "tunesmith.__main__:9] from main" in errors[0]
    assert LOG_FORMAT.startswith("%(levelname)s")


def test_configure_logging_rank_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    configure_logging("INFO")
    assert get_logger().level == logging.WARNING
    monkeypatch.setenv("RANK", "0")
    configure_logging(logging.DEBUG)
    assert get_logger().level == logging.DEBUG
    with pytest.raises(
        ValueError, match="log_level: 'loud' is not a log level; use one of DEBUG, INFO"
    ):
        configure_logging("loud")
    configure_logging(None)
    assert get_logger().level == logging.INFO


def test_require() -> None:
    assert require("json", "dev").dumps([1]) == "[1]"
    with pytest.raises(ImportError, match=r"pip install 'tunesmith\[loggers\]'"):
        require("surely_not_installed_module", "loggers")


def test_run_log_keeps_what_was_said_before_the_folder_was_known(tmp_path) -> None:
    from tunesmith.utils import attach_run_log, get_logger, start_run_log, stop_run_log

    log = get_logger("tunesmith.test_run_log")
    log.info("from an earlier run")
    start_run_log()
    log.info("runtime: cpu")
    log.warning("skipped 2 rows")
    path = attach_run_log(tmp_path / "logs")
    log.info("saved checkpoint")
    stop_run_log()
    log.info("after the run")
    lines = path.read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "runtime: cpu",
        "skipped 2 rows",
        "saved checkpoint",
    ]
    assert lines[1].startswith("WARNING ")
    start_run_log()  # a resumed run appends to the same file
    log.info("resumed")
    attach_run_log(tmp_path / "logs")
    stop_run_log()
    assert path.read_text().splitlines()[-1].endswith("] resumed")
    assert attach_run_log(tmp_path) is None  # not started: nothing kept
