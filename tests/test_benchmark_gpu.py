"""The GPU benchmark harness (issue 18): its table and JSON, configs, run order, a CPU dry run.

The GPU run itself needs a GPU and torchtune 0.6.1 (``make bench-gpu``); these tests check
what decides the table: ratios and target checks on synthetic rows, the two systems'
configs describing the same training, the budget order, and (slow) the whole harness end to
end on the CPU with a tiny model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import _setup  # noqa: E402
import run_gpu  # noqa: E402
from _table import check_targets, report, runs_table, summarize_steps  # noqa: E402


def _row(system: str, tps: float, peak: float, first: float, **kw) -> dict:
    return dict(
        system=system,
        workload="lora-packed-eager",
        method="lora",
        packed=True,
        compile=False,
        rc=0,
        tps=tps,
        peak_gib=peak,
        first_loss=first,
        last_loss=5.0,
        recompiles=0,
        wall_s=20.0,
        **kw,
    )


def test_summary_takes_the_median_after_warmup() -> None:
    steps = [(1, 9.0, 10.0), (2, 8.0, 50.0), (3, 7.0, 100.0), (4, 6.0, 300.0), (5, 5.0, 200.0)]
    assert summarize_steps(steps, warmup=2) == {"tps": 200.0, "first_loss": 9.0, "last_loss": 5.0}
    assert summarize_steps([], warmup=2) == {}


def test_table_puts_both_systems_side_by_side_with_ratios_and_targets() -> None:
    rows = [_row("tunesmith", 3000.0, 8.0, 11.7654), _row("torchtune", 2000.0, 10.0, 11.7650)]
    line = runs_table(rows).splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["lora-packed-eager", "3000", "2000", "1.50"]
    assert cells[4] == "8.00 / 10.00" and cells[5] == "0.80"
    assert cells[10] == "ok"
    slow = [_row("tunesmith", 2400.0, 9.5, 11.8), _row("torchtune", 2000.0, 10.0, 11.7)]
    verdict = check_targets(*slow)
    assert "tok/s 1.20x < 1.3x" in verdict and "memory 0.95x > 0.9x" in verdict
    assert "first loss differs" in verdict


def test_failed_and_skipped_runs_have_no_ratio() -> None:
    rows = [
        _row("tunesmith", 3000.0, 8.0, 11.0),
        dict(
            system="torchtune",
            workload="lora-packed-eager",
            rc=None,
            skipped="torchtune unavailable",
        ),
    ]
    cells = [c.strip() for c in runs_table(rows).splitlines()[2].strip("|").split("|")]
    assert cells[2] == "skipped (torchtune unavailable)" and cells[3] == "-"
    rows[1] = dict(system="torchtune", workload="lora-packed-eager", rc=1, error="OOM")
    cells = [c.strip() for c in runs_table(rows).splitlines()[2].strip("|").split("|")]
    assert cells[2] == "FAIL (OOM)" and cells[3] == "-" and cells[10] == "-"


def test_report_names_gpu_driver_torch_date_and_dropped_rows() -> None:
    results = {
        "date": "2026-12-02 10:00 UTC",
        "runtime": {
            "device": "cuda:0",
            "device_name": "NVIDIA H200",
            "capability": "9.0",
            "memory_gib": 139.8,
            "driver": "580.159.04",
            "torch": "2.11.0+cu130",
            "cuda": "13.0",
            "cudnn": 91002,
            "python": "3.12.3",
        },
        "torchtune_version": "0.6.1",
        "budget_s": 480,
        "elapsed_s": 470,
        "dropped": "dora-packed-compile (over the time budget)",
        "runs": [_row("tunesmith", 3000.0, 8.0, 11.0), _row("torchtune", 2000.0, 10.0, 11.0)],
        "probe": [
            {
                "call": "sdpa",
                "dtype": "bfloat16",
                "heads": "32 / 8",
                "lens": "2048 x 2048",
                "mask": "is_causal",
                "kernels": ["aten::_scaled_dot_product_flash_attention"],
            }
        ],
        "micro": [
            {
                "tokens": 4096,
                "docs": 16,
                "dtype": "bfloat16",
                "loop_ms": 8.0,
                "varlen_ms": 1.0,
                "flex_ms": 2.0,
                "mask_ms": 4.0,
            }
        ],
    }
    text = report(results)
    for needle in (
        "NVIDIA H200",
        "driver 580.159.04",
        "torch 2.11.0+cu130",
        "2026-12-02",
        "not run: dora-packed-compile",
        "_scaled_dot_product_flash_attention",
        "| 4096 | 16 | bfloat16 | 8.00 | 1.00 | 2.00 | 4.00 | 8.0 |",
    ):
        assert needle in text, needle
    json.dumps(results)  # the JSON side is plain data


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "dora"])
def test_both_systems_get_the_same_training(method: str, tmp_path: Path) -> None:
    w = run_gpu.GpuWorkload(method, packed=True, compile=True, steps=6)
    cfgs = {
        s: yaml.safe_load(
            _setup.config(
                s, w, tmp_path / s, tmp_path / "m", tmp_path / "d.json", "cuda", _setup.LLAMA_1B
            )
        )
        for s in ("tunesmith", "torchtune")
    }
    ts, tt = cfgs["tunesmith"], cfgs["torchtune"]
    shared = (
        "batch_size",
        "max_steps_per_epoch",
        "shuffle",
        "seed",
        "compile",
        "dtype",
        "device",
        "optimizer",
        "clip_grad_norm",
        "gradient_accumulation_steps",
    )
    for key in shared:
        assert ts[key] == tt[key], key
    assert ts["max_steps_per_epoch"] == 7 and ts["dataset"]["packed"] is True
    assert ts["tokenizer"]["max_seq_len"] == tt["tokenizer"]["max_seq_len"] == 2048
    for key in (
        "lora_rank",
        "lora_alpha",
        "lora_attn_modules",
        "apply_lora_to_mlp",
        "quantize_base",
        "use_dora",
    ):
        assert ts["model"].get(key) == tt["model"].get(key), key
    assert tt["model"]["_component_"].endswith("lora_llama3_2" if method != "full" else "llama3_2")
    assert tt["model"]["embed_dim"] == 2048 and tt["model"]["num_layers"] == 16
    assert ts["log_peak_memory_stats"] is tt["log_peak_memory_stats"] is False


def test_compile_rows_come_after_every_eager_row() -> None:
    args = run_gpu.argparse.Namespace(
        methods="full,lora,qlora,dora",
        packed="0,1",
        compile="1,0",
        steps=6,
        batch_size=2,
        seq_len=2048,
        tiny=False,
    )
    order = [w.compile for w in run_gpu.workloads(args)]
    assert order == [False] * 8 + [True] * 8


@pytest.mark.slow
def test_cpu_dry_run_end_to_end(tmp_path: Path) -> None:
    """The harness on the CPU (tiny model, 2 steps): packages probed offline, model built,
    kernels probed, runs trained through _launch.py, JSON + markdown written."""
    empty = tmp_path / "wheels"
    empty.mkdir()
    cmd = [
        sys.executable,
        str(GPU / "run_gpu.py"),
        "--dry-run",
        "--systems",
        "tunesmith",
        "--wheels",
        str(empty),
        "--work",
        str(tmp_path / "work"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads((tmp_path / "work" / "results-gpu.json").read_text())
    runs = [r for r in results["runs"] if r["system"] == "tunesmith"]
    assert runs and all(r["rc"] == 0 and len(r["steps"]) == 2 for r in runs)
    assert results["probe"] and results["micro"]
    assert "| lora-packed-eager |" in (tmp_path / "work" / "RESULTS-gpu.md").read_text()
