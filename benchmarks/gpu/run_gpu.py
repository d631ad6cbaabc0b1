#!/usr/bin/env python
"""tunesmith vs torchtune 0.6.1 on one GPU: the same random Llama-3.2-1B, rows and order.

One command (``make bench-gpu``), within a time budget (default 8 minutes, 480 s):

1. packages: the machine's CUDA torch is used as it is; what is missing (torchtune 0.6.1,
   torchao, datasets, omegaconf, ...) is installed from ``benchmarks/gpu/wheels`` into the
   work folder with no network (``make bench-gpu-wheels`` fills that folder elsewhere);
2. a random-init Hugging Face checkpoint with Llama-3.2-1B's shape, built on the GPU in bf16,
   a byte-level tokenizer, synthetic alpaca rows (``benchmarks/_assets.make_alpaca``);
3. the attention-kernel probe and the document-attention microbenchmark (``_kernels.py``);
4. full / LoRA / QLoRA / DoRA finetunes, bf16, seq 2048, batch 2, unpacked and packed,
   compile off then on, each system in a fresh process (``_launch.py``: the same peak-memory
   and step hooks in both), ``--steps`` steps with ``--warmup`` left out of the median.
   Rows are run in priority order (every compile-off row first); a row whose estimated
   time no longer fits the budget is not started and is listed as dropped.

Writes ``<work>/results-gpu.json`` and ``benchmarks/RESULTS-gpu.md`` (GPU, driver, torch,
date), prints the table.

    make bench-gpu                                       # on the GPU machine
    python benchmarks/gpu/run_gpu.py --dry-run           # CPU, tiny model, 2 steps: < 60 s
    python benchmarks/gpu/run_gpu.py --methods lora --compile 0 --budget 200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "src"))  # tunesmith from this checkout

import _setup  # noqa: E402
from _assets import make_alpaca  # noqa: E402
from _systems import parse_disk_logger  # noqa: E402
from _table import report, runs_table, summarize_steps  # noqa: E402

RESULTS_MD = HERE.parent / "RESULTS-gpu.md"
RECIPES = {"full": "full_finetune_single_device", "lora": "lora_finetune_single_device"}
#: first guesses of one run's wall seconds on an H200 (replaced by measurements as rows run)
EST_EAGER_S, EST_COMPILE_S = 30.0, 75.0


@dataclass(frozen=True)
class GpuWorkload:
    method: str  # full | lora | qlora | dora
    packed: bool
    compile: bool
    steps: int
    batch_size: int = 2
    seq_len: int = 2048
    tiny: bool = False

    @property
    def name(self) -> str:
        return (
            f"{self.method}-{'packed' if self.packed else 'unpacked'}-"
            f"{'compile' if self.compile else 'eager'}"
        )


def workloads(args: argparse.Namespace) -> list[GpuWorkload]:
    """Priority order: compile off before on; within each, the methods as listed."""
    out = []
    for comp in [c == "1" for c in args.compile.split(",")]:
        for method in args.methods.split(","):
            for packed in [p == "1" for p in args.packed.split(",")]:
                out.append(
                    GpuWorkload(
                        method, packed, comp, args.steps, args.batch_size, args.seq_len, args.tiny
                    )
                )
    return sorted(out, key=lambda w: w.compile)


def _log(msg: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_one(args, system: str, w: GpuWorkload, env: dict, timeout: float) -> dict:
    """Train ``w`` with ``system`` in a fresh process; one result row."""
    run_dir = args.work / "runs" / f"{system}-{w.name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = run_dir / "config.yaml"
    cfg.write_text(
        _setup.config(system, w, run_dir, args.model_dir, args.data, args.device, args.fields)
    )
    if system == "tunesmith":
        command = ["tunesmith", "run", "finetune", "--config", str(cfg)]
    else:
        recipe = RECIPES["full" if w.method == "full" else "lora"]
        command = ["tune", "run", recipe, "--config", str(cfg)]
    result = run_dir / "launch.json"
    cmd = [
        args.python,
        str(HERE / "_launch.py"),
        "--result",
        str(result),
        "--steps",
        str(w.steps),
        "--",
        *command,
    ]
    t0 = time.time()
    with open(run_dir / "stdout.txt", "w") as out:
        try:
            rc: int | str = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=run_dir, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    row: dict = dict(
        system=system,
        workload=w.name,
        method=w.method,
        packed=w.packed,
        compile=w.compile,
        rc=rc,
        wall_s=round(time.time() - t0, 1),
    )
    steps = parse_disk_logger(run_dir / "logs")[: w.steps]
    row["steps"] = steps
    row.update(summarize_steps(steps, args.warmup))
    if result.is_file():
        launch = json.loads(result.read_text())
        if launch.get("peak_alloc"):
            row["peak_gib"] = round(launch["peak_alloc"] / 2**30, 3)
            row["reserved_gib"] = round(launch["peak_reserved"] / 2**30, 3)
        row["max_rss_mib"] = round(launch.get("max_rss_mib", 0))
        frames = [s["frames"] for s in launch.get("steps", [])]
        if len(frames) > args.warmup:
            row["recompiles"] = frames[-1] - frames[args.warmup - 1] if args.warmup else 0
        row["resets_ignored"] = launch.get("resets_ignored", 0)
    if rc != 0 or len(steps) < w.steps:
        lines = (run_dir / "stdout.txt").read_text(errors="replace").splitlines()
        errors = [x for x in lines if re.search(r"Error|error:|Exception|Traceback", x)]
        row["error"] = (errors[-1] if errors else (lines[-1] if lines else str(rc)))[:300]
        if rc == 0:
            row["rc"] = "short"  # fewer logged steps than asked
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU check)")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU check: --device cpu --tiny, 2 steps, seq 256, LoRA packed only",
    )
    ap.add_argument("--methods", default="full,lora,qlora,dora")
    ap.add_argument("--packed", default="0,1")
    ap.add_argument("--compile", default="0,1")
    ap.add_argument("--systems", default="tunesmith,torchtune")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=400, help="alpaca rows")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for everything")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("TUNESMITH_GPU_BENCH_WORK", "/tmp/tunesmith-gpu-bench")),
    )
    ap.add_argument("--wheels", type=Path, default=_setup.WHEELS)
    ap.add_argument("--python", default=sys.executable, help="interpreter with CUDA torch")
    ap.add_argument(
        "--allow-index",
        action="store_true",
        help="install what the wheels folder lacks from the package index",
    )
    ap.add_argument(
        "--copy-to",
        type=Path,
        default=None,
        help="also copy the JSON and markdown here after every row ($OUT)",
    )
    ap.add_argument("--no-kernels", action="store_true", help="skip probe + microbenchmark")
    ap.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help=f"markdown output (default {RESULTS_MD} on CUDA, <work>/ on CPU)",
    )
    args = ap.parse_args()
    t_start = time.time()
    if args.dry_run:
        args.device, args.tiny, args.steps, args.warmup = "cpu", True, 2, 0
        args.seq_len, args.compile, args.rows = 256, "0", 64
        args.methods, args.packed = "lora", "1"  # one row per system: < 60 s on 2 idle cores
    args.work.mkdir(parents=True, exist_ok=True)

    # ---- packages and runtime ----------------------------------------------------------
    site = args.work / "site"
    pkgs = _setup.ensure_packages(args.python, site, args.wheels, _log, args.allow_index)
    env = _setup.child_env(site)
    systems_ok = _setup.probe_systems(args.python, env)
    if systems_ok.get("tunesmith"):
        raise SystemExit(f"tunesmith does not import here: {systems_ok['tunesmith']}")
    import torch

    from tunesmith.utils import describe_runtime, format_runtime

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: this python ({args.python}, torch {torch.__version__}) "
            "sees no CUDA GPU; on a CPU machine run --dry-run"
        )
    runtime = describe_runtime(args.device)
    _log(f"runtime: {format_runtime(runtime)}")
    if systems_ok.get("torchtune"):
        _log(f"torchtune unavailable: {systems_ok['torchtune']}")
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runtime": runtime,
        "packages": pkgs,
        "torchtune_version": systems_ok.get("torchtune_version")
        if not systems_ok.get("torchtune")
        else None,
        "torchao_version": systems_ok.get("torchao_version"),
        "budget_s": args.budget,
        "warmup": args.warmup,
        "runs": [],
    }

    # ---- model and data ----------------------------------------------------------------
    args.fields = _setup.TINY if args.tiny else _setup.LLAMA_1B
    args.model_dir = args.work / "models" / ("tiny" if args.tiny else "llama3_2_1b_random")
    t0 = time.time()
    _setup.build_model(args.model_dir, args.fields, args.device)
    args.data = make_alpaca(args.work / "data" / f"alpaca-{args.rows}.json", args.rows)
    info = json.loads((args.model_dir / "bench_model_info.json").read_text())
    results["model"] = (
        f"random-init {'tiny' if args.tiny else 'Llama-3.2-1B'}-shaped Llama "
        f"({info['params'] / 1e6:,.0f}M parameters, bf16, tied embeddings), byte tokenizer"
    )
    results["workload_note"] = (
        f"bf16, seq {args.seq_len}, batch {args.batch_size}, {args.steps} steps "
        f"({args.warmup} warm-up), AdamW, LoRA rank {_setup.lora_args('lora', args.tiny)['lora_rank']} "
        "on q/v/output_proj + MLP, alpaca rows in file order"
    )
    _log(f"model + data ready in {time.time() - t0:.0f} s: {results['model']}")
    out_json = args.work / "results-gpu.json"
    markdown = args.markdown or (
        RESULTS_MD if args.device.startswith("cuda") else args.work / "RESULTS-gpu.md"
    )

    def save() -> None:
        results["elapsed_s"] = round(time.time() - t_start)
        out_json.write_text(json.dumps(results, indent=1))
        markdown.write_text(report(results))
        if args.copy_to:
            args.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy(out_json, args.copy_to / out_json.name)
            shutil.copy(markdown, args.copy_to / markdown.name)

    # ---- kernels -----------------------------------------------------------------------
    if not args.no_kernels:
        import _kernels

        t0 = time.time()
        dev = torch.device(args.device)
        seq = args.seq_len if not args.tiny else 64
        results["probe"] = _kernels.probe_kernels(dev, seq=seq, hd=64 if not args.tiny else 16)
        sizes = ((4096, 4), (4096, 16), (8192, 64)) if not args.tiny else ((256, 4),)
        hd = 64 if not args.tiny else 16
        results["micro"] = _kernels.document_microbench(
            dev, sizes, hd=hd, reps=10 if not args.tiny else 2
        )
        _log(f"kernel probe + microbenchmark: {time.time() - t0:.0f} s")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        save()

    # ---- finetunes, within the budget --------------------------------------------------
    systems = [s for s in args.systems.split(",") if s]
    measured: dict[bool, list[float]] = {False: [], True: []}
    dropped = []
    for w in workloads(args):
        guess = EST_COMPILE_S if w.compile else EST_EAGER_S
        if w.compile and measured[False] and not measured[True]:
            guess = max(guess, 2.5 * max(measured[False]))
        runnable = [s for s in systems if not (s == "torchtune" and systems_ok.get("torchtune"))]
        # the latest workload of the same kind (compile caches make later compile rows cheaper)
        last = measured[w.compile][-len(runnable) :] if runnable else []
        per_run = max(last) if last else guess
        left = args.budget - (time.time() - t_start)
        if per_run * len(runnable) > left:
            dropped.append(w.name)
            _log(
                f"{w.name}: not started (needs ~{per_run * len(runnable):.0f} s, {left:.0f} s left)"
            )
            continue
        for system in systems:
            if system == "torchtune" and systems_ok.get("torchtune"):
                results["runs"].append(
                    dict(
                        system=system,
                        workload=w.name,
                        method=w.method,
                        packed=w.packed,
                        compile=w.compile,
                        rc=None,
                        skipped="torchtune unavailable",
                    )
                )
                continue
            left = args.budget - (time.time() - t_start)
            row = run_one(args, system, w, env, timeout=max(30.0, left))
            measured[w.compile].append(row["wall_s"])
            results["runs"].append(row)
            brief = {
                k: row.get(k)
                for k in (
                    "system",
                    "workload",
                    "tps",
                    "peak_gib",
                    "first_loss",
                    "last_loss",
                    "recompiles",
                    "wall_s",
                    "error",
                )
            }
            _log(json.dumps(brief))
            save()
    results["dropped"] = ", ".join(dropped) + (" (over the time budget)" if dropped else "")
    save()
    print()
    print(runs_table(results["runs"]))
    print(f"\nresults: {out_json}\nmarkdown: {markdown}")


if __name__ == "__main__":
    main()
