"""The GPU benchmark's results: one row per (system, workload), as JSON and a markdown table.

A run row: ``system`` (tunesmith | torchtune), ``workload`` (``full-unpacked-eager``, ...),
``method``, ``packed``, ``compile``, ``rc``, ``steps`` ([(step, loss, tokens/s)]), ``tps``
(median tokens/s after the warm-up steps), ``first_loss``, ``last_loss``, ``peak_gib``
(``torch.cuda.max_memory_allocated`` from the first forward to the last step, the same
hook in both systems; CPU: None), ``recompiles`` (dynamo frames compiled after warm-up),
``wall_s``, ``error``; or ``skipped`` with the reason (budget, torchtune unavailable).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import _fmt  # noqa: E402

SYSTEMS = ("tunesmith", "torchtune")
TARGET_TPS, TARGET_MEM, TARGET_LOSS = 1.3, 0.9, 1e-3


def summarize_steps(steps: list[tuple[int, float, float]], warmup: int) -> dict:
    """``tps`` = median tokens/s of the steps after ``warmup``; first and last loss."""
    if not steps:
        return {}
    timed = [s[2] for s in steps if s[0] > warmup] or [steps[-1][2]]
    return {
        "tps": round(statistics.median(timed), 1),
        "first_loss": steps[0][1],
        "last_loss": steps[-1][1],
    }


def _ok(r: dict | None) -> bool:
    return bool(r) and r.get("rc") == 0 and r.get("tps") is not None


def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    """``a[key] / b[key]`` when both runs succeeded and both have the value."""
    if not (_ok(a) and _ok(b)) or not b.get(key) or a.get(key) is None:
        return None
    return a[key] / b[key]


def _cell(r: dict | None) -> str:
    if not r:
        return "-"
    if r.get("skipped"):
        return f"skipped ({r['skipped']})"
    if not _ok(r):
        return f"FAIL ({str(r.get('error') or r.get('rc'))[:80]})"
    return _fmt(r["tps"])


def _pair(ts: dict | None, tt: dict | None, key: str, spec: str) -> str:
    return " / ".join(
        _fmt(r.get(key), spec) if _ok(r) and r.get(key) is not None else "-" for r in (ts, tt)
    )


def check_targets(ts: dict | None, tt: dict | None) -> str:
    """``ok`` or the targets a workload misses (tokens/s, memory, first loss)."""
    tps, mem = ratio(ts, tt, "tps"), ratio(ts, tt, "peak_gib")
    if tps is None:
        return "-"
    missed = []
    if tps < TARGET_TPS:
        missed.append(f"tok/s {tps:.2f}x < {TARGET_TPS}x")
    if mem is not None and mem > TARGET_MEM:
        missed.append(f"memory {mem:.2f}x > {TARGET_MEM}x")
    if abs(ts["first_loss"] - tt["first_loss"]) > TARGET_LOSS:
        missed.append("first loss differs")
    if ts.get("recompiles"):
        missed.append(f"{ts['recompiles']} recompiles")
    return "ok" if not missed else "; ".join(missed)


def runs_table(rows: list[dict]) -> str:
    """Markdown: one line per workload, tunesmith and torchtune side by side, with ratios."""
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        if "system" in r:
            by.setdefault(r["workload"], {})[r["system"]] = r
    out = [
        "| workload | tok/s tunesmith | tok/s torchtune | x torchtune | peak GiB ts / tt "
        "| memory x tt | first loss ts / tt | last loss ts / tt | recompiles after warm-up "
        "ts / tt | wall s ts / tt | targets |",
        "|" + "---|" * 11,
    ]
    for name, systems in by.items():
        ts, tt = systems.get("tunesmith"), systems.get("torchtune")
        tps, mem = ratio(ts, tt, "tps"), ratio(ts, tt, "peak_gib")
        out.append(
            f"| {name} | {_cell(ts)} | {_cell(tt)} | {_fmt(tps, '.2f')} "
            f"| {_pair(ts, tt, 'peak_gib', '.2f')} | {_fmt(mem, '.2f')} "
            f"| {_pair(ts, tt, 'first_loss', '.4f')} | {_pair(ts, tt, 'last_loss', '.4f')} "
            f"| {_pair(ts, tt, 'recompiles', 'd')} | {_pair(ts, tt, 'wall_s', '.0f')} "
            f"| {check_targets(ts, tt)} |"
        )
    return "\n".join(out)


def probe_table(probe: list[dict]) -> str:
    out = [
        "| call | dtype | q / kv heads | q x kv len | mask | kernels |",
        "|---|---|---|---|---|---|",
    ]
    for p in probe:
        kernels = ", ".join(p.get("kernels") or []) or p.get("error", "-")
        out.append(
            f"| {p['call']} | {p['dtype']} | {p['heads']} | {p['lens']} | {p['mask']} | {kernels} |"
        )
    return "\n".join(out)


def micro_table(micro: list[dict]) -> str:
    out = [
        "| tokens | documents | dtype | loop ms | varlen ms | flex ms | dense mask ms "
        "| loop / best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in micro:
        times = {k: m.get(k) for k in ("loop_ms", "varlen_ms", "flex_ms", "mask_ms")}
        others = [v for k, v in times.items() if k != "loop_ms" and v]
        best = min(others) if others else None
        speed = (times["loop_ms"] / best) if best and times["loop_ms"] else None
        out.append(
            f"| {m['tokens']} | {m['docs']} | {m['dtype']} | {_fmt(times['loop_ms'], '.2f')} "
            f"| {_fmt(times['varlen_ms'], '.2f')} | {_fmt(times['flex_ms'], '.2f')} "
            f"| {_fmt(times['mask_ms'], '.2f')} | {_fmt(speed, '.1f')} |"
        )
    return "\n".join(out)


def report(results: dict) -> str:
    """The whole markdown page (``benchmarks/RESULTS-gpu.md``) from the JSON results."""
    rt = results.get("runtime", {})
    head = [
        "# GPU benchmark: tunesmith vs torchtune 0.6.1",
        "",
        f"- date: {results.get('date', '-')}",
        f"- GPU: {rt.get('device_name', '-')} ({rt.get('device', '-')}, sm "
        f"{rt.get('capability') or '-'}, {rt.get('memory_gib') or '-'} GiB), driver "
        f"{rt.get('driver') or '-'}",
        f"- torch {rt.get('torch', '-')}, CUDA {rt.get('cuda') or '-'}, cuDNN "
        f"{rt.get('cudnn') or '-'}, Python {rt.get('python', '-')}; torchtune "
        f"{results.get('torchtune_version') or 'unavailable'}, torchao "
        f"{results.get('torchao_version') or '-'}",
        f"- model: {results.get('model', '-')}; {results.get('workload_note', '')}",
        f"- budget: {results.get('budget_s', '-')} s, used {results.get('elapsed_s', '-')} s"
        + (f"; not run: {results['dropped']}" if results.get("dropped") else ""),
        "",
        "## Finetuning",
        "",
        runs_table(results.get("runs", [])),
        "",
        "tok/s: median trained tokens per second (each system's own logger) after "
        f"{results.get('warmup', 2)} warm-up steps. peak GiB: max_memory_allocated from the "
        "first forward to the last step (the same hook in both processes, reset after init, "
        "later resets disabled). Targets: tok/s >= 1.3x, memory <= 0.9x, first loss within "
        "1e-3, no recompiles after warm-up.",
    ]
    if results.get("probe"):
        head += ["", "## Attention kernels (which SDPA backend each call gets)", ""]
        head.append(probe_table(results["probe"]))
    if results.get("micro"):
        head += ["", "## Document attention: varlen / flex vs a per-document loop (fwd+bwd)", ""]
        head.append(micro_table(results["micro"]))
    return "\n".join(head) + "\n"
