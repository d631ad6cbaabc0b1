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
    # torchtune's exclude_param_names: substrings of the names left unchecked
    validate_expected_param_dtype(
        model.named_parameters(), torch.float32, exclude_param_names=["1."]
    )


_INTERVAL_PROBE = """
import json, torch
from tunesmith.training.memory import get_memory_stats, reset_peak_memory_stats
ok = reset_peak_memory_stats("cpu")
block = torch.ones(384 * 1024 * 1024, dtype=torch.uint8)  # 384 MiB, touched
del block
first = get_memory_stats("cpu")  # this interval held the block; reads and resets
second = get_memory_stats("cpu")  # a new interval: the block is gone
print(json.dumps({"ok": ok, "first": first, "second": second}))
"""


def test_cpu_peak_is_per_interval() -> None:
    """Issue 18: peaks are reset after each read (torchtune's definition), also on CPU."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _INTERVAL_PROBE], check=True, capture_output=True, text=True
    ).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    if not stats["ok"]:
        pytest.skip("this kernel cannot reset the peak RSS")
    first, second = stats["first"]["peak_memory_rss"], stats["second"]["peak_memory_rss"]
    assert first - second > 0.3  # GiB: the second interval never held the block


class _FakeCuda:
    """Allocator statistics of a fake CUDA device: a running peak that reset clears."""

    def __init__(self) -> None:
        self.current, self.peak, self.resets = 1 << 30, 1 << 30, 0

    def allocate(self, n: int) -> None:
        self.current += n
        self.peak = max(self.peak, self.current)
        self.current -= n

    def memory_stats(self, device=None):
        return {"active_bytes.all.peak": self.peak}

    def max_memory_allocated(self, device=None):
        return self.peak

    max_memory_reserved = max_memory_allocated

    def reset_peak_memory_stats(self, device=None):
        self.peak, self.resets = self.current, self.resets + 1


def test_accelerator_peaks_reset_after_init_and_each_log(monkeypatch) -> None:
    from omegaconf import OmegaConf

    from tunesmith.recipes._finetune_observe import Observer
    from tunesmith.training import memory

    fake = _FakeCuda()
    for name in ("memory_stats", "max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    fake.allocate(8 << 30)  # model init: 8 GiB transient
    logged = []
    monkeypatch.setattr(memory.log, "info", lambda msg, *a: logged.append(msg % a))
    cfg = OmegaConf.create({"log_peak_memory_stats": True, "metric_logger": None})
    obs = Observer(cfg, rank=0, world_size=1, device=torch.device("cuda"), total_steps=2, initial=0)
    assert fake.resets == 1 and "peak_memory_alloc: 9.00 GiB" in logged[0]  # init's peak
    seen = []
    monkeypatch.setattr(
        obs, "logger", type("L", (), {"log_dict": lambda s, m, step: seen.append(m)})()
    )
    fake.allocate(2 << 30)  # step 1: 2 GiB activations
    obs.log_step(1, loss=1.0, lr=0.1, tokens=torch.tensor(10), grad_norm=None)
    fake.allocate(1 << 30)  # step 2: 1 GiB
    obs.log_step(2, loss=1.0, lr=0.1, tokens=torch.tensor(10), grad_norm=None)
    obs.progress.close()
    assert [round(m["peak_memory_alloc"], 2) for m in seen] == [3.0, 2.0]  # per interval
    assert fake.resets == 3
    assert memory.reset_peak_memory_stats("cuda") and fake.resets == 4
    assert not memory.reset_peak_memory_stats("mps")
