"""Run one system's finetune recipe in this process, measured the same way for both systems.

    python _launch.py --result R.json --steps N -- tunesmith run finetune --config C.yaml
    python _launch.py --result R.json --steps N -- tune run lora_finetune_single_device ...

Hooks installed before the recipe starts (global torch hooks: neither system is changed):

* the first ``nn.Module`` forward resets CUDA's peak-memory counters (so init, checkpoint
  load and quantization are excluded), after which ``reset_peak_memory_stats`` is a no-op
  (torchtune resets at every log otherwise: its figure would be per step);
* every optimizer step records the wall time (after a device sync), the peak allocated and
  reserved bytes, and how many frames dynamo has compiled so far;
* the pre-step hook of step ``N + 1`` writes ``R.json`` and ends the process (``os._exit``):
  the checkpoint save at the end of an epoch is no part of the measurement, and the
  recipe's step-``N`` log line is already flushed. The config asks for ``N + 1`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def _frames_compiled() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["frames"]["ok"])
    except Exception:
        return 0


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: _launch.py --result R.json --steps N -- <command ...>")
    cut = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--result", required=True)
    ap.add_argument("--steps", type=int, required=True)
    args = ap.parse_args(argv[:cut])
    command = argv[cut + 1 :]

    import torch

    cuda = torch.cuda.is_available()
    state: dict = {"steps": [], "peak_alloc": 0, "peak_reserved": 0, "resets_ignored": 0}
    real_reset = torch.cuda.reset_peak_memory_stats

    def ignored_reset(*a, **k) -> None:
        state["resets_ignored"] += 1

    def write() -> None:
        state["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(args.result, "w") as f:
            json.dump(state, f)

    def first_forward(module, inputs) -> None:
        handle.remove()
        if cuda:
            torch.cuda.synchronize()
            real_reset()
            torch.cuda.reset_peak_memory_stats = ignored_reset
            torch.cuda.memory.reset_peak_memory_stats = ignored_reset
        state["t_first_forward"] = time.perf_counter()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(first_forward)

    def before_step(optimizer, a, k) -> None:
        if len(state["steps"]) >= args.steps:
            write()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def after_step(optimizer, a, k) -> None:
        if cuda:
            torch.cuda.synchronize()
            state["peak_alloc"] = torch.cuda.max_memory_allocated()
            state["peak_reserved"] = torch.cuda.max_memory_reserved()
        state["steps"].append({"t": time.perf_counter(), "frames": _frames_compiled()})

    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    register_optimizer_step_pre_hook(before_step)
    register_optimizer_step_post_hook(after_step)
    state["t_start"] = time.perf_counter()
    sys.argv = command
    try:
        if command[0] == "tunesmith":
            from tunesmith.cli.main import main as cli
        elif command[0] == "tune":
            from torchtune._cli.tune import main as cli
        else:
            raise SystemExit(f"unknown system command {command[0]!r}")
        rc = cli()
        raise SystemExit(rc or 0)
    finally:
        write()


if __name__ == "__main__":
    main()
