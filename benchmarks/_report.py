"""Matmul ceiling, FLOPs per token, and the results table of ``run.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

RANK = 8


def matmul_gflops(n: int = 2048, reps: int = 10) -> dict[str, float]:
    """Best-of-3 GFLOP/s of an ``n x n`` matmul in fp32 and bf16 (torch's default threads)."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
        out[name] = best
    return out


def flops_per_token(info: dict, method: str, lora_output: bool) -> float:
    """6·N (full) or 4·N + 6·N_adapter (LoRA), N = matmul parameters (see run.py)."""
    d, v = info["hidden_size"], info["vocab_size"]
    n = info["params"] if info["tie_word_embeddings"] else info["params"] - v * d
    if method == "full":
        return 6.0 * n
    hd = d // info["num_attention_heads"]
    per_layer = RANK * (d + info["num_attention_heads"] * hd) + RANK * (
        d + info["num_key_value_heads"] * hd
    )
    adapter = info["num_hidden_layers"] * per_layer + (RANK * (d + v) if lora_output else 0)
    return 4.0 * n + 6.0 * adapter


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def _ok(r: dict) -> bool:
    return bool(r) and r.get("rc") == 0 and r.get("tps") is not None


def _ratio(a: dict, b: dict, key: str) -> str:
    if not (_ok(a) and _ok(b)) or not b.get(key):
        return "-"
    return f"{a[key] / b[key]:.2f}"


def _row(name: str, systems: dict[str, dict], mm: dict | None, work: Path) -> str:
    """One table line: a workload's three systems side by side."""
    ts, tt, hf = (systems.get(k, {}) for k in ("tunesmith", "torchtune", "hf"))
    trio = (ts, tt, hf)
    any_row = ts or tt or hf
    info_path = work / "models" / any_row["size"] / "bench_model_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None

    def tps(r: dict) -> str:
        if not r:
            return "-"
        return _fmt(r.get("tps")) if _ok(r) else f"FAIL ({r.get('error', r.get('rc'))})"

    def frac(r: dict) -> str:
        if not (_ok(r) and mm and info):
            return "-"
        lora_out = r["method"] == "lora" and not info["tie_word_embeddings"]
        f = flops_per_token(info, r["method"], lora_out) * r["tps"] / 1e9
        return f"{100 * f / mm[r['dtype']]:.0f}%"

    def triple(key: str, spec: str) -> str:
        return " / ".join(_fmt(r.get(key), spec) if r else "-" for r in trio)

    other = max((r.get("other_cpu", 0) for r in trio if r), default=0)
    return (
        f"| {name} | {tps(ts)} | {tps(tt)} | {tps(hf)} | {_ratio(ts, tt, 'tps')} "
        f"| {_ratio(ts, hf, 'tps')} | {triple('peak_rss_mib', '.0f')} "
        f"| {_ratio(ts, tt, 'peak_rss_mib')} | {triple('first_loss', '.4f')} "
        f"| {triple('last_loss', '.4f')} | {' / '.join(frac(r) for r in trio)} "
        f"| {other:.0%} |"
    )


def format_table(rows: list[dict], work: Path) -> str:
    """Markdown: one line per workload, the three systems side by side, then data prep."""
    mm = next((r["matmul_gflops"] for r in rows if "matmul_gflops" in r), None)
    runs = [r for r in rows if "system" in r]
    prep = [r for r in rows if r.get("data_prep")]
    by: dict[str, dict[str, dict]] = {}
    for r in runs:
        by.setdefault(r["workload"], {})[r["system"]] = r
    head = (
        "| workload | tok/s tunesmith | tok/s torchtune | tok/s HF+PEFT | x torchtune | x HF "
        "| peak RSS MiB ts / tt / hf | RSS x tt | first loss ts / tt / hf | last loss ts / tt / hf "
        "| % matmul ceiling ts / tt / hf | other CPU |"
    )
    out = [head, "|" + "---|" * 12]
    for name, systems in by.items():
        out.append(_row(name, systems, mm, work))
    if mm:
        out.append("")
        out.append(
            f"matmul ceiling (2048x2048): fp32 {mm['fp32']:.0f} GFLOP/s, "
            f"bf16 {mm['bf16']:.0f} GFLOP/s. FLOPs/token: full 6·N, LoRA 4·N + 6·N_adapter "
            "(N = matmul parameters: all but the embedding table); tokens = trained tokens."
        )
    for p in prep:
        out.append("")
        out.append(f"data preparation ({p['rows']:,} alpaca rows, tokenize + pack):")
        out.append(p["table"] or f"FAILED: {p.get('stderr', '')}")
    return "\n".join(out)
