"""setup_torch_profiler: torchtune's signature/return value; real traces on CPU."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tunesmith.training.profiler import DEFAULT_SCHEDULE, DummyProfiler, setup_torch_profiler


def test_disabled_returns_dummy_and_cfg() -> None:
    profiler, cfg = setup_torch_profiler(enabled=False)
    assert isinstance(profiler, DummyProfiler) and cfg == {"enabled": False}
    with profiler as prof:
        prof.step()


def test_signature_matches_torchtune_keys() -> None:
    keys = [
        "enabled",
        "cpu",
        "cuda",
        "profile_memory",
        "with_stack",
        "record_shapes",
        "with_flops",
        "wait_steps",
        "warmup_steps",
        "active_steps",
        "num_cycles",
        "output_dir",
    ]
    assert list(inspect.signature(setup_torch_profiler).parameters)[: len(keys)] == keys


def test_enabled_profiles_and_writes_traces(tmp_path: Path) -> None:
    # A torchtune-style config section, including its _component_ key.
    section = OmegaConf.create(
        {
            "_component_": "torchtune.training.setup_torch_profiler",
            "enabled": True,
            "output_dir": str(tmp_path / "prof"),
            "cpu": True,
            "cuda": True,
            "profile_memory": True,
            "with_stack": False,
            "record_shapes": False,
            "with_flops": False,
            "wait_steps": 1,
            "warmup_steps": 1,
            "active_steps": 2,
        }
    )
    profiler, cfg = setup_torch_profiler(**section)
    assert isinstance(profiler, torch.profiler.profile)
    assert cfg.with_stack and cfg.record_shapes  # forced by profile_memory
    assert cfg.num_cycles == DEFAULT_SCHEDULE["num_cycles"]  # missing key -> default
    model = torch.nn.Linear(8, 8)
    with profiler as prof:
        for _ in range(5):
            model(torch.randn(4, 8)).sum().backward()
            prof.step()
    out = tmp_path / "prof" / "iteration_4"
    assert list(out.glob("rank0*.pt.trace.json.gz"))
    averages = (out / "rank0_key_averages.txt").read_text()
    assert "aten::addmm" in averages or "aten::linear" in averages
