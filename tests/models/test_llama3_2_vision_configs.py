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


def _keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return {k for key, v in node.items() for k in {prefix + key} | _keys(v, f"{prefix}{key}.")}
    return set()


def test_bundled_llama3_2_vision_configs_are_torchtunes(tmp_path):
    """The bundled configs/llama3_2_vision/*.yaml: torchtune v0.6.1's files of the same names
    with the same keys and values (components renamed to tunesmith's), and they validate."""
    import yaml

    from tunesmith.config import resolve_component

    bundled = (
        Path(__file__).resolve().parents[2]
        / "src"
        / "tunesmith"
        / "configs"
        / FOLDER.split("/")[-1]
    )
    ours = sorted(p.name for p in bundled.glob("*.yaml"))
    if MIRROR.exists():
        names = sorted(
            Path(n).name for n in _git("ls-tree", "--name-only", "v0.6.1", f"{FOLDER}/").split()
        )
        assert ours == names
    assert len(ours) == 11
    failures = []
    for name in ours:
        path = bundled / name
        assert path.read_text().startswith("# recipe: "), name
        mine = yaml.safe_load(path.read_text())
        if MIRROR.exists():
            theirs = yaml.safe_load(_git("show", f"v0.6.1:{FOLDER}/{name}"))
            assert _keys(mine) == _keys(theirs), name
            renamed = yaml.safe_load(
                yaml.safe_dump(theirs)
                .replace("torchtune.", "tunesmith.")
                .replace("/tmp/torchtune/", "/tmp/tunesmith/")
            )
            assert mine == renamed, name
        for problem in validate_config(load_config(path)):
            missing_extra = any(
                f"'{pkg}' is an optional dependency" in problem.message
                and importlib.util.find_spec(pkg) is None
                for pkg in OPTIONAL_EXTRAS
            )
            if problem.severity == "error" and not missing_extra:
                failures.append(f"{name}: {problem}")
        for key in ("model", "tokenizer", "checkpointer"):
            assert callable(resolve_component(mine[key]["_component_"])), (name, key)
    assert failures == []


def test_torchtune_multi_dataset_vision_config_is_bundled_and_validates(tmp_path):
    """torchtune's 12th Llama 3.2 Vision config, moved to dev/11B_lora_multi_dataset on its
    main branch (a weighted ``datasets:`` mix): validates unchanged, and the bundled
    ``dev/11B_lora_multi_dataset`` has its keys and values with tunesmith's names."""
    import yaml

    bundled = (
        Path(__file__).resolve().parents[2]
        / "src/tunesmith/configs/dev/11B_lora_multi_dataset.yaml"
    )
    mine = yaml.safe_load(bundled.read_text())
    assert bundled.read_text().startswith("# recipe: finetune")
    assert [d["weight"] for d in mine["datasets"]] == [1.0] * 4
    assert not [p for p in validate_config(load_config(bundled)) if p.severity == "error"]
    if not MIRROR.exists():
        pytest.skip(f"needs the torchtune mirror at {MIRROR} (TUNESMITH_TORCHTUNE_MIRROR)")
    text = _git("show", "HEAD:recipes/configs/dev/11B_lora_multi_dataset.yaml")
    path = tmp_path / "11B_lora_multi_dataset.yaml"
    path.write_text(text)
    assert not [p for p in validate_config(load_config(path)) if p.severity == "error"]
    theirs = yaml.safe_load(text)
    assert _keys(mine) == _keys(theirs)
    renamed = yaml.safe_load(
        yaml.safe_dump(theirs)
        .replace("torchtune.", "tunesmith.")
        .replace("/tmp/torchtune/", "/tmp/tunesmith/")
    )
    assert mine == renamed
