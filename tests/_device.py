"""The device the suite runs device-generic tests on: ``TUNESMITH_TEST_DEVICE`` (default cpu).

``TUNESMITH_TEST_DEVICE=cuda pytest tests/modules tests/models ...`` runs the model, loss,
LoRA/QLoRA/DoRA, recipe and generation tests on a GPU; where it names a device this machine
lacks, those tests are skipped with the reason. Inputs are still drawn on the CPU (same
seeds, same values) and moved, so CPU runs are unchanged.
"""

from __future__ import annotations

import os

import pytest
import torch

ENV = "TUNESMITH_TEST_DEVICE"


def test_device() -> torch.device:
    """The device named by ``TUNESMITH_TEST_DEVICE``; skips the calling test where it is absent."""
    name = os.environ.get(ENV, "cpu").strip() or "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        pytest.fail(f"{ENV}={name!r} is not a torch device; use cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            pytest.skip(f"{ENV}={name} but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            pytest.skip(f"{ENV}={name} but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        pytest.skip(f"{ENV}={name} but MPS is not available")
    return device


test_device.__test__ = False  # not a test, despite the name
