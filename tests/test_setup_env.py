"""Installing on a GPU machine (issue 18): ``make ... TORCH= VENV= WHEELS=`` and the runtime log.

``scripts/setup_env.py`` decides which torch the Makefile's environment gets; these tests run
its decisions with stubbed probes (no installs), the Makefile through ``make -n``, and
``describe_runtime`` on this machine's device.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("setup_env", REPO / "scripts" / "setup_env.py")
setup_env = importlib.util.module_from_spec(_spec)
sys.modules["setup_env"] = setup_env
_spec.loader.exec_module(setup_env)


def _probe(table: dict[str, dict | None]):
    def fn(python: str) -> dict | None:
        return table.get(python)

    return fn


def _env(prefix: str, torch: str | None, cuda: bool) -> dict:
    return {"python": f"{prefix}/bin/python", "prefix": prefix, "torch": torch, "cuda": cuda,
            "site": [f"{prefix}/lib/python3.12/site-packages"]}  # fmt: skip


def _commands(plan, venv: Path, wheels: str | None = None) -> str:
    cmds = setup_env.build_commands(plan, venv, "2.13.0", "dev", wheels)
    return "\n".join(setup_env._shell(c) for c in cmds)


def test_auto_reuses_an_active_cuda_torch_without_touching_it(tmp_path: Path) -> None:
    user = tmp_path / "user-env"
    (user / "bin").mkdir(parents=True)
    (user / "bin" / "python").touch()
    probe = _probe({str(user / "bin" / "python"): _env(str(user), "2.11.0+cu130", True)})
    venv = tmp_path / ".venv"
    plan = setup_env.resolve("auto", venv, {"VIRTUAL_ENV": str(user)}, "python3", probe)
    assert plan.mode == "overlay" and plan.base_python == str(user / "bin" / "python")
    text = _commands(plan, venv)
    assert "torch==" not in text  # no torch install at all
    assert "--link" in text and "download.pytorch.org" not in text
    pin = setup_env.constraint_file(plan, venv)
    assert pin.read_text().splitlines()[-1] == "torch==2.11.0+cu130"  # pip may not replace it


def test_auto_with_a_cpu_torch_active_installs_the_cpu_build(tmp_path: Path) -> None:
    probe = _probe({"python3": _env("/usr", "2.13.0+cpu", False)})
    plan = setup_env.resolve("auto", tmp_path / ".venv", {}, "python3", probe)
    assert plan.mode == "install" and plan.torch == "cpu"
    text = _commands(plan, tmp_path / ".venv")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu" in text
    assert setup_env.constraint_file(plan, tmp_path).name == "constraints.txt"


def test_torch_cuda_index_and_offline_wheels(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    plan = setup_env.resolve("cu128", venv, {}, "python3", _probe({}))
    assert plan.mode == "install"
    assert "--index-url https://download.pytorch.org/whl/cu128 torch==2.13.0+cu128" in (
        _commands(plan, venv)
    )
    offline = _commands(plan, venv, wheels="/w")
    assert "download.pytorch.org" not in offline and "--upgrade pip" not in offline
    assert all("--no-index --find-links /w" in line for line in offline.splitlines()[1:])


def test_venv_pointing_at_the_users_environment_installs_in_place(tmp_path: Path) -> None:
    user = tmp_path / "conda"
    (user / "bin").mkdir(parents=True)
    (user / "bin" / "python").touch()
    probe = _probe({str(user / "bin" / "python"): _env(str(user), "2.8.0", True)})
    plan = setup_env.resolve("auto", user, {}, "python3", probe)
    assert plan.mode == "inplace"
    text = _commands(plan, user)
    assert "-m venv" not in text and "torch==" not in text
    with pytest.raises(setup_env.SetupError, match="drop TORCH=cu128"):
        setup_env.resolve("cu128", user, {}, "python3", probe)


@pytest.mark.parametrize(
    ("torch", "message"),
    [("cuda", "TORCH=cuda: use auto, env, cpu"), ("env", "TORCH=env: the active environment")],
)
def test_user_mistakes_are_one_line_and_exit_2(
    torch: str, message: str, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    rc = setup_env.main(["--torch", torch, "--venv", "/nonexistent/v", "--python", "/no/py"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {message}") and "\n" not in err


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_passes_torch_venv_and_wheels_through() -> None:
    # Under `make test` (CI) the parent make's MAKEFLAGS/MAKELEVEL leak in and a nested
    # make prints "Entering directory" lines; run each dry run as a top-level make.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    make = ["make", "--no-print-directory"]

    def dry(*variables: str) -> str:
        out = subprocess.run([*make, "-n", "-B", "test", *variables], cwd=REPO, env=env,
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    default = dry()
    assert "--torch 'auto' --venv '.venv'" in default and "--wheels" not in default
    assert "--stamp '.venv/.installed-auto'" in default
    gpu = dry("TORCH=cu126", "WHEELS=/opt/wheels")
    assert "--torch 'cu126'" in gpu and "--wheels '/opt/wheels'" in gpu
    assert "--stamp '.venv/.installed-cu126-offline'" in gpu
    user = dry("VENV=/opt/env")
    assert "--venv '/opt/env'" in user and "/opt/env/bin/python -m pytest" in user
    out = subprocess.run([*make, "-n", "bench-gpu", "ARGS=--dry-run", "BENCH_PYTHON=/opt/py"],
                         cwd=REPO, env=env, capture_output=True, text=True).stdout  # fmt: skip
    assert out.strip() == "/opt/py benchmarks/gpu/run_gpu.py --dry-run"  # no .venv build
    out = subprocess.run([*make, "-n", "bench-gpu-wheels", "BENCH_TORCH=cu128"], cwd=REPO,
                         env=env, capture_output=True, text=True).stdout  # fmt: skip
    assert "benchmarks/gpu/fetch_wheels.py --torch cu128" in out


def test_setup_env_dry_run_prints_the_plan() -> None:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "setup_env.py"), "--torch",
                          "cu128", "--venv", "/tmp/ts-none/.venv", "--dry-run"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "installing torch 2.13.0+cu128" in out.stdout
    assert "whl/cu128 torch==2.13.0+cu128" in out.stdout


def test_constraints_only_bind_make_not_the_package() -> None:
    """``pip install tunesmith`` keeps any torch >= the lower bound: no exact pin anywhere."""
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_req = next(x for x in pyproject.splitlines() if x.strip().startswith('"torch'))
    assert ">=" in torch_req and "==" not in torch_req and "<" not in torch_req
    assert "PIP_CONSTRAINT" not in (REPO / "Makefile").read_text()  # passed by setup_env only


def test_describe_runtime_names_device_and_torch_build() -> None:
    import torch

    from tunesmith.utils import _device, describe_runtime, format_runtime, log_runtime

    info = describe_runtime("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert info["cuda"] == torch.version.cuda and info["driver"] is None
    line = format_runtime(info)
    assert line.startswith("cpu ") and f"torch {torch.__version__}" in line
    _device._DESCRIBED.pop("cpu", None)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("tunesmith.runtime")
    logger.addHandler(handler)
    try:
        first = log_runtime(torch.device("cpu"))
        assert first is not None
        assert log_runtime(torch.device("cpu")) is first  # each run logs; probed once
        assert log_runtime(torch.device("cpu"), rank=1) is None
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [f"runtime: {line}"] * 2


def test_describe_runtime_on_a_gpu_reports_cuda_and_driver() -> None:
    import torch

    from tunesmith.utils import describe_runtime

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    info = describe_runtime("cuda")
    assert info["device"].startswith("cuda:") and info["capability"] and info["memory_gib"] > 0
    assert info["cuda"] and info["gpus"] >= 1
