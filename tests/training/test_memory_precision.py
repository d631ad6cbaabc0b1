"""Memory statistics and precision helpers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from tunesmith.training.memory import cleanup_before_training, log_memory_stats
from tunesmith.training.precision import get_dtype, set_default_dtype, validate_expected_param_dtype

_RSS_PROBE = """
import json, torch
from tunesmith.training.memory import get_memory_stats
before = get_memory_stats("cpu")
block = torch.ones(256 * 1024 * 1024, dtype=torch.uint8)  # 256 MiB, touched
after = get_memory_stats(torch.device("cpu"))
print(json.dumps({"before": before, "after": after}))
"""


def test_cpu_memory_stats_track_peak_rss() -> None:
    # A fresh process: in the test process freed memory may be reused, hiding the growth.
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE], check=True, capture_output=True, text=True
    ).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    before, after = stats["before"], stats["after"]
    assert set(before) == {"peak_memory_rss", "memory_rss"}
    assert 0.01 < before["memory_rss"] <= before["peak_memory_rss"] < 1024
    assert after["memory_rss"] - before["memory_rss"] > 0.2  # GiB
    assert after["peak_memory_rss"] >= after["memory_rss"]
    cleanup_before_training()


def test_log_memory_stats_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tunesmith.training.memory"):
        line = log_memory_stats(
            {"peak_memory_alloc": 1.234, "peak_memory_reserved": 2.0}, "after step 1:"
        )
    assert line == "after step 1: peak_memory_alloc: 1.23 GiB, peak_memory_reserved: 2.00 GiB"
    assert line in caplog.text


@pytest.mark.parametrize(
    "name,dtype",
    [
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("fp16", torch.float16),
        ("torch.float64", torch.float64),
        (None, torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_get_dtype(name: object, dtype: torch.dtype, device: torch.device) -> None:
    assert get_dtype(name, device=device) == dtype


def test_device_memory_stats_track_the_peak(device: torch.device) -> None:
    """On a GPU: allocated / reserved / peak in GiB, and the peak resets (issue 18 item 11)."""
    from tunesmith.training.memory import get_memory_stats

    if device.type != "cuda":
        pytest.skip("CUDA memory statistics (the CPU's RSS is tested above)")
    torch.cuda.reset_peak_memory_stats(device)
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    stats = get_memory_stats(device)
    assert stats["peak_memory_alloc"] >= 0.25 - 1e-6
    assert stats["peak_memory_reserved"] >= stats["peak_memory_alloc"]
    del block
    after = get_memory_stats(device)  # the peak was reset by the first call
    assert after["peak_memory_alloc"] < stats["peak_memory_alloc"] - 0.2


def test_get_dtype_error_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"dtype: unknown precision 'fp8'.*bf16"):
        get_dtype("fp8")


def test_set_default_dtype_is_scoped() -> None:
    with set_default_dtype(torch.bfloat16):
        layer = nn.Linear(2, 2)
        assert torch.get_default_dtype() == torch.bfloat16
    assert layer.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(RuntimeError), set_default_dtype(torch.float64):
        raise RuntimeError("boom")
    assert torch.get_default_dtype() == torch.float32


def test_validate_expected_param_dtype_names_parameter() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    validate_expected_param_dtype(model, torch.float32)
    model[1].to(torch.bfloat16)
    with pytest.raises(
        ValueError, match=r"'1.weight' has dtype torch.bfloat16, expected torch.float32"
    ):
        validate_expected_param_dtype(model.named_parameters(), torch.float32)
