"""torch.profiler set-up from a config's ``profiler`` section (torchtune's keys and defaults).

``setup_torch_profiler(**cfg.profiler)`` returns ``(profiler, resolved_cfg)``; when disabled the
profiler is a ``DummyProfiler`` whose ``start``/``stop``/``step`` do nothing, so the training loop
is the same either way::

    profiler, _ = setup_torch_profiler(**cfg.profiler)
    with profiler:
        for step in ...:
            train_one_step()
            profiler.step()   # once per optimizer step
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

__all__ = [
    "DEFAULT_PROFILER_ACTIVITIES",
    "DEFAULT_PROFILE_DIR",
    "DEFAULT_SCHEDULE",
    "DEFAULT_TRACE_OPTS",
    "PROFILER_KEY",
    "DummyProfiler",
    "setup_torch_profiler",
]

log = logging.getLogger(__name__)

DEFAULT_PROFILE_DIR = "profiler_output"
PROFILER_KEY = "profiler"
"""The config key of the profiler section (torchtune's ``training.PROFILER_KEY``)."""
DEFAULT_PROFILER_ACTIVITIES = {
    torch.profiler.ProfilerActivity.CPU,
    torch.profiler.ProfilerActivity.CUDA,
    torch.profiler.ProfilerActivity.XPU,
}
DEFAULT_SCHEDULE = {"wait_steps": 5, "warmup_steps": 3, "active_steps": 2, "num_cycles": 1}
DEFAULT_TRACE_OPTS = {
    "profile_memory": False,
    "with_stack": False,
    "record_shapes": True,
    "with_flops": False,
}


class DummyProfiler:
    """Stands in for ``torch.profiler.profile`` when profiling is off: a null context whose
    ``start``, ``stop`` and ``step`` do nothing."""

    def __enter__(self) -> DummyProfiler:
        return self

    def __exit__(self, *args: object) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def step(self) -> None:
        return None


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def trace_handler(prof: torch.profiler.profile, output_dir: str, row_limit: int = 25) -> None:
    """Write one cycle's results to ``output_dir/iteration_<step>/``: the Chrome/TensorBoard trace
    (``rank<r>.*.pt.trace.json.gz``), key averages, stacks when recorded and, on CUDA with
    ``profile_memory``, the memory timeline."""
    rank = _rank()
    trace_dir = Path(output_dir) / f"iteration_{prof.step_num}"
    trace_dir.mkdir(parents=True, exist_ok=True)
    begin = time.monotonic()
    torch.profiler.tensorboard_trace_handler(
        str(trace_dir), worker_name=f"rank{rank}", use_gzip=True
    )(prof)
    metric = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    if prof.profile_memory and torch.cuda.is_available() and rank == 0:
        try:
            prof.export_memory_timeline(str(trace_dir / f"rank{rank}_memory-timeline.html"))
        except Exception as exc:  # the exporter is fragile across torch versions
            log.warning("could not export the memory timeline: %s", exc)
    if prof.with_stack:
        try:
            prof.export_stacks(str(trace_dir / f"rank{rank}_stacks.txt"), metric=metric)
        except Exception as exc:
            log.warning("could not export stacks: %s", exc)
    table = prof.key_averages(group_by_input_shape=prof.record_shapes).table(
        sort_by=metric, row_limit=row_limit
    )
    (trace_dir / f"rank{rank}_key_averages.txt").write_text(table + "\n")
    if rank == 0:
        log.info("profiler traces at %s (%.1fs)", trace_dir, time.monotonic() - begin)


def setup_torch_profiler(
    enabled: bool = False,
    cpu: bool = True,
    cuda: bool = True,
    profile_memory: bool = DEFAULT_TRACE_OPTS["profile_memory"],
    with_stack: bool = DEFAULT_TRACE_OPTS["with_stack"],
    record_shapes: bool = DEFAULT_TRACE_OPTS["record_shapes"],
    with_flops: bool = DEFAULT_TRACE_OPTS["with_flops"],
    wait_steps: int | None = None,
    warmup_steps: int | None = None,
    active_steps: int | None = None,
    num_cycles: int | None = None,
    output_dir: str | None = None,
    xpu: bool = False,
    **unused: Any,
) -> tuple[torch.profiler.profile | DummyProfiler, DictConfig]:
    """Build a ``torch.profiler.profile`` with a ``wait/warmup/active/repeat`` schedule counted in
    optimizer steps; torchtune's signature, defaults and return value ``(profiler, cfg)``.

    Missing schedule keys take ``DEFAULT_SCHEDULE`` values; ``profile_memory`` turns on
    ``with_stack`` and ``record_shapes`` (it needs both); CUDA activity is only requested where
    CUDA exists. ``_component_`` and other unknown keys from a config are ignored.
    """
    if not enabled:
        return DummyProfiler(), DictConfig({"enabled": False})

    activities = []
    if cpu:
        activities.append(torch.profiler.ProfilerActivity.CPU)
    if cuda and torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    if xpu and hasattr(torch, "xpu") and torch.xpu.is_available():
        activities.append(torch.profiler.ProfilerActivity.XPU)
    if not activities:
        log.warning("profiler: no available activity selected; profiling the CPU")
        activities = [torch.profiler.ProfilerActivity.CPU]
        cpu = True

    given = {
        "wait_steps": wait_steps,
        "warmup_steps": warmup_steps,
        "active_steps": active_steps,
        "num_cycles": num_cycles,
    }
    missing = [k for k, v in given.items() if v is None]
    if missing:
        log.warning(
            "profiler: %s not set, using %s",
            ", ".join(missing),
            ", ".join(f"{k}={DEFAULT_SCHEDULE[k]}" for k in missing),
        )
    schedule_args = {k: (DEFAULT_SCHEDULE[k] if v is None else int(v)) for k, v in given.items()}
    schedule = torch.profiler.schedule(
        wait=schedule_args["wait_steps"],
        warmup=schedule_args["warmup_steps"],
        active=schedule_args["active_steps"],
        repeat=schedule_args["num_cycles"],
    )
    with_stack = with_stack or profile_memory
    record_shapes = record_shapes or profile_memory
    experimental_config = (
        torch._C._profiler._ExperimentalConfig(verbose=True) if with_stack else None
    )
    out = Path(output_dir if output_dir is not None else DEFAULT_PROFILE_DIR)
    out.mkdir(parents=True, exist_ok=True)

    profiler = torch.profiler.profile(
        activities=activities,
        profile_memory=profile_memory,
        with_stack=with_stack,
        record_shapes=record_shapes,
        with_flops=with_flops,
        schedule=schedule,
        experimental_config=experimental_config,
        on_trace_ready=partial(trace_handler, output_dir=str(out)),
    )
    resolved = DictConfig(
        {
            "enabled": True,
            "output_dir": str(out),
            "cpu": cpu,
            "cuda": bool(cuda and torch.cuda.is_available()),
            "profile_memory": profile_memory,
            "with_stack": with_stack,
            "record_shapes": record_shapes,
            "with_flops": with_flops,
            **schedule_args,
        }
    )
    return profiler, resolved
