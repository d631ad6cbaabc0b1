"""torchtune's own llama3_2_vision configs (read from the torchtune mirror, v0.6.1 and HEAD)
validate unchanged: every component, builder argument and model_type resolves."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from tunesmith.config import load_config, validate_config
from tunesmith.config._components import OPTIONAL_EXTRAS

MIRROR = Path(os.environ.get("TUNESMITH_TORCHTUNE_MIRROR", "/work/.mirror/pytorch+torchtune/repo"))
FOLDER = "recipes/configs/llama3_2_vision"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(MIRROR), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("ref", ["v0.6.1", "HEAD"])
def test_torchtune_llama3_2_vision_configs_validate(ref, tmp_path):
    if not MIRROR.exists():
        pytest.skip(f"needs the torchtune mirror at {MIRROR} (TUNESMITH_TORCHTUNE_MIRROR)")
    names = _git("ls-tree", "--name-only", ref, f"{FOLDER}/").split()
    assert any(n.endswith("11B_lora_single_device.yaml") for n in names)
    failures = []
    for name in names:
        path = tmp_path / Path(name).name
        path.write_text(_git("show", f"{ref}:{name}"))
        for problem in validate_config(load_config(path)):
            missing_extra = any(
                f"'{pkg}' is an optional dependency" in problem.message
                and importlib.util.find_spec(pkg) is None
                for pkg in OPTIONAL_EXTRAS
            )
            if problem.severity == "error" and not missing_extra:
                failures.append(f"{path.name}: {problem}")
    assert failures == []
