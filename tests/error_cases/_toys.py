"""Small inputs for error cases: a tiny Llama, toy instruct data, a finetune config file.

The tiny model is written once per process and copied into each case's folder, so a case may
damage its copy freely.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

RECIPES_TESTS = Path(__file__).resolve().parents[1] / "recipes"
if str(RECIPES_TESTS) not in sys.path:  # `_recipe_toys.ByteChatTokenizer` is a config component
    sys.path.insert(0, str(RECIPES_TESTS))

__all__ = ["RECIPES_TESTS", "finetune", "instruct_data", "tiny_model", "write_config"]

_CACHE: dict[str, Path] = {}


def tiny_model(tmp: Path, name: str = "model") -> Path:
    """A copy of a random 2-layer HF Llama (``model.safetensors`` + ``config.json``)."""
    if "model" not in _CACHE:
        from tests.recipes._recipe_toys import write_tiny_llama

        _CACHE["model"] = write_tiny_llama(Path(tempfile.mkdtemp(prefix="ts-err-model-")))
    return Path(shutil.copytree(_CACHE["model"], tmp / name))


def instruct_data(tmp: Path, n: int = 16, name: str = "data.json") -> Path:
    """Alpaca-style rows (``instruction``, ``input``, ``output``) in ``tmp/name``."""
    from tests.recipes._recipe_toys import write_instruct_data

    return write_instruct_data(tmp / name, n=n)


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value


_DELETE = object()


def write_config(tmp: Path, recipe: str = "finetune", name: str = "cfg.yaml", **over: Any) -> Path:
    """``tmp/cfg.yaml``: the tiny finetune config (``output_dir: tmp/out``), CPU, fp32.

    ``over`` sets dotted keys (``**{"optimizer.lr": -1}``); a value of ``None`` is kept as
    null, ``write_config.DELETE`` removes the key.
    """
    from tests.recipes.conftest import base_config

    model = tmp / "model" if (tmp / "model").is_dir() else tiny_model(tmp)
    data = tmp / "data.json" if (tmp / "data.json").is_file() else instruct_data(tmp)
    cfg = base_config(tmp / "out", model, data)
    cfg["device"] = "cpu"
    for key, value in over.items():
        _set(cfg, key, value)
    path = tmp / name
    path.write_text(f"# recipe: {recipe}\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


write_config.DELETE = _DELETE  # type: ignore[attr-defined]


def finetune(tmp: Path, *overrides: str, **over: Any) -> list[str]:
    """``run finetune --config tmp/cfg.yaml [overrides]`` with ``over`` written into the file."""
    return ["run", "finetune", "--config", str(write_config(tmp, **over)), *overrides]
