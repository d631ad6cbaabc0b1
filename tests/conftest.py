"""Shared pytest fixtures: ../shared/assets (skipped where absent) and the test ``device``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests._device import test_device

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = Path(
    os.environ.get("TUNESMITH_SHARED_ASSETS", REPO_ROOT.parent / "shared" / "assets")
)

# Keep the tokenization cache of test runs out of the user's ~/.cache.
os.environ.setdefault(
    "TUNESMITH_DATA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "tunesmith-test-cache")
)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def assets() -> Path:
    """Path to ../shared/assets; skips the test with a clear reason where it is absent."""
    if not SHARED_ASSETS.is_dir():
        pytest.skip(
            f"needs the shared test assets at {SHARED_ASSETS} (not present on this machine)"
        )
    return SHARED_ASSETS


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of device-generic tests: ``TUNESMITH_TEST_DEVICE`` (default cpu; see
    ``tests/_device.py``). Skips where it names a GPU this machine lacks."""
    return test_device()
