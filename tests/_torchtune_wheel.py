"""torchtune 0.6.1's own files (recipes, reference sources), taken unchanged from its PyPI wheel.

The wheel is downloaded once with ``pip download torchtune==0.6.1 --no-deps`` into a cache
folder outside the repository (``TUNESMITH_TT061_CACHE``, default ``~/.cache/tunesmith-tt061``),
checked against its published sha256, and its ``recipes/`` folder (recipe files and YAML
configs) is extracted beside it. torchtune is never installed: nothing imports it, and
``tunesmith run`` serves the files' ``import torchtune`` from tunesmith. Without network access
(and no cached wheel) the calling test is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

WHEEL = "torchtune-0.6.1-py3-none-any.whl"
WHEEL_SHA256 = "bcbc4ee9774b5c5829a5ff13df851e0b0e32416c018af8db53faa3472ac256e7"
"""sha256 of the wheel PyPI serves for torchtune 0.6.1 (pip checks it in transit too)."""


def cache_dir() -> Path:
    return Path(os.environ.get("TUNESMITH_TT061_CACHE", "~/.cache/tunesmith-tt061")).expanduser()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(cache: Path) -> Path:
    wheel = cache / WHEEL
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "torchtune==0.6.1", "--no-deps",
           "--only-binary", ":all:", "--disable-pip-version-check", "-q", "-d", str(cache)]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot download torchtune 0.6.1's wheel from PyPI ({e}); needs network once")
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"cannot download torchtune 0.6.1's wheel from PyPI (offline?): {last}")
    if _sha256(wheel) != WHEEL_SHA256:
        wheel.unlink()
        pytest.fail(f"{WHEEL} from PyPI does not have the expected sha256 {WHEEL_SHA256}")
    return wheel


def torchtune_061_recipes() -> Path:
    """The folder holding the wheel's ``recipes/`` (``recipes/*.py``, ``recipes/configs/``)."""
    cache = cache_dir()
    out = cache / "wheel"
    marker = out / ".extracted"
    if not marker.is_file():
        wheel = _download(cache)
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.startswith("recipes/")]
            if not names:
                pytest.fail(f"{WHEEL} has no recipes/ folder")
            z.extractall(out, members=names)
        marker.write_text(WHEEL_SHA256)
    return out / "recipes"


def torchtune_061_source(path: str) -> str:
    """The text of one file of the wheel (``torchtune/generation/_generation.py``), for tests
    that run a piece of torchtune's own code as the reference."""
    with zipfile.ZipFile(_download(cache_dir())) as z:
        return z.read(path).decode("utf-8")
