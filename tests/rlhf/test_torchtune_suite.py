"""torchtune 0.6.1's own RL unit tests, unchanged, run against tunesmith.

The files come from the shared copy of torchtune's test suite; a ``conftest.py`` beside them
installs an import hook that answers every ``torchtune.*`` import with a module whose
attributes resolve through tunesmith's torchtune name mapping (``resolve_component``), so
``from torchtune import rlhf`` / ``from torchtune.rlhf.loss import PPOLoss`` get tunesmith's
objects. The ported, asset-free versions of these expectations are in test_ppo.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE_FILES = {
    "tests/torchtune/rlhf/loss/test_ppo_loss.py": 5,
    "tests/torchtune/rlhf/test_rewards.py": 10,
    "tests/torchtune/rlhf/test_sequence_processing.py": 1,
    "tests/torchtune/training/test_pooling.py": 4,
}

_SHIM = """
import importlib.abc, importlib.machinery, sys, types
from tunesmith.config import ConfigError, resolve_component


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []

        def __getattr__(attr, _name=spec.name):
            if attr.startswith("__"):
                raise AttributeError(attr)
            try:
                return resolve_component(f"{_name}.{attr}")
            except ConfigError as e:
                raise AttributeError(str(e)) from None

        mod.__getattr__ = __getattr__
        return mod

    def exec_module(self, module):
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchtune" or fullname.startswith("torchtune."):
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        return None


sys.meta_path.insert(0, _Finder())
"""


def test_torchtune_0_6_1_rl_unit_tests_pass_on_tunesmith(assets: Path, tmp_path: Path) -> None:
    suite = assets / "torchtune_tests_suite"
    if not (suite / "tests/torchtune/rlhf/test_rewards.py").is_file():
        pytest.skip(f"torchtune's test suite not in {suite}")
    for rel in SUITE_FILES:
        shutil.copy(suite / rel, tmp_path / Path(rel).name)
    (tmp_path / "conftest.py").write_text(_SHIM)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(tmp_path / "pytest.ini"), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False,
    )  # fmt: skip
    tail = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed and int(passed.group(1)) == sum(SUITE_FILES.values()), tail
