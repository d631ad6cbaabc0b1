"""The issue-8 benchmark harness: log parsing, the side-by-side table, the committed results.

The harness itself needs torchtune's peer venv and minutes of CPU (``make bench-quick``);
these tests check the parts that decide what the table says, on synthetic logs in each
system's real format, and that the committed figures cover every workload the issue names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _report import format_table  # noqa: E402
from _systems import parse_disk_logger, parse_step_lines  # noqa: E402


def test_parses_each_systems_step_logs(tmp_path: Path) -> None:
    ts = tmp_path / "ts"
    ts.mkdir()
    (ts / "log_1.jsonl").write_text(
        '{"step": 1, "loss": 9.73, "lr": 2e-05, "tokens_per_second": 1900.5}\n'
        '{"step": 2, "loss": 9.5, "lr": 2e-05, "tokens_per_second": 2000.0}\n'
        '{"step": 2, "val_loss": 9.4}\n'
    )
    assert parse_disk_logger(ts) == [(1, 9.73, 1900.5), (2, 9.5, 2000.0)]
    tt = tmp_path / "tt"
    tt.mkdir()
    (tt / "log_1.txt").write_text(
        "Step 1 | loss:9.731790542602539 lr:2e-05 tokens_per_second_per_gpu:1470.1\n"
        "Step 2 | loss:9.6 lr:2e-05 tokens_per_second_per_gpu:1500.0 peak_memory:1.0\n"
    )
    assert parse_disk_logger(tt) == [(1, 9.731790542602539, 1470.1), (2, 9.6, 1500.0)]
    hf = tmp_path / "stdout.txt"
    hf.write_text(
        "loading\nSTEP 1 loss=9.7318 tokens=1160 tps=1433.5\nSTEP 2 loss=9.6 tokens=1100 tps=1400\n"
    )
    assert parse_step_lines(hf) == [(1, 9.7318, 1433.5), (2, 9.6, 1400.0)]


def _run(system: str, tps: float | None, rss: int, rc: int = 0) -> dict:
    row = dict(system=system, workload="15m-full-fp32-unpacked", size="15m", method="full",
               dtype="fp32", packed=False, rc=rc, peak_rss_mib=rss, other_cpu=0.01,
               first_loss=9.7318, last_loss=9.07)  # fmt: skip
    if tps is not None:
        row["tps"] = tps
    return row


def test_table_puts_three_systems_side_by_side_with_ratios(tmp_path: Path) -> None:
    rows = [
        {"matmul_gflops": {"fp32": 200.0, "bf16": 850.0}},
        _run("tunesmith", 3000.0, 800),
        _run("torchtune", 2000.0, 1600),
        _run("hf", 1500.0, 1500),
    ]
    line = next(x for x in format_table(rows, tmp_path).splitlines() if x.startswith("| 15m"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:6] == ["3000", "2000", "1500", "1.50", "2.00"]
    assert cells[6] == "800 / 1600 / 1500" and cells[7] == "0.50"
    failed = [rows[0], _run("tunesmith", 3000.0, 800), _run("torchtune", None, 0, rc=1)]
    line = next(x for x in format_table(failed, tmp_path).splitlines() if x.startswith("| 15m"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2].startswith("FAIL") and cells[4] == "-"  # no ratio against a failed run


def test_committed_results_cover_every_workload_with_all_three_systems() -> None:
    rows = [
        json.loads(line)
        for name in ("results-2026-11-25-15m.jsonl", "results-2026-11-25-large.jsonl")
        for line in (BENCH / name).read_text().splitlines()
        if line.strip()
    ]
    runs: dict[str, dict[str, dict]] = {}
    for r in rows:
        if "system" in r:
            runs.setdefault(r["workload"], {})[r["system"]] = r
    expected = {
        f"{size}-{method}-{dtype}-{kind}"
        for size in ("15m", "120m", "smollm2-135m")
        for method in ("full", "lora")
        for dtype in ("fp32", "bf16")
        for kind in ("unpacked", "packed")
    }
    assert set(runs) == expected
    for name, systems in runs.items():
        assert set(systems) == {"tunesmith", "torchtune", "hf"}, name
        assert all(s["rc"] == 0 and s["tps"] > 0 for s in systems.values()), name
        ts, tt = systems["tunesmith"]["first_loss"], systems["torchtune"]["first_loss"]
        assert ts == pytest.approx(tt, abs=1e-3), name  # same work as torchtune
    assert any(r.get("data_prep") and r["rc"] == 0 for r in rows)
    assert "2026-11-25" in (BENCH / "RESULTS.md").read_text()
