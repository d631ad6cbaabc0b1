"""The GPU harness's attention probe and document-attention benchmark, run small on CPU."""

from __future__ import annotations

import torch

from tunesmith.modules._attention_probe import (
    bench_document_attention,
    kernel_of,
    probe_sdpa_backends,
)


def test_probe_names_a_kernel_for_every_call():
    rows = probe_sdpa_backends(
        "cpu", torch.float32, heads=4, kv_heads=2, head_dim=16, seq_len=64, batch=1
    )
    calls = {(r["call"], r["gqa"], r["mode"]) for r in rows}
    assert ("documents", True, "tunesmith") in calls and ("masked", False, "enable_gqa") in calls
    assert len(rows) == 2 * (3 * 2 + 1)  # MHA and GQA: 3 dense calls x 2 modes + documents
    for row in rows:
        assert row["kernel"] in ("flash-cpu", "math"), row
    docs = [r for r in rows if r["call"] == "documents"]
    assert {r["strategy"] for r in docs} == {"loop"}  # CPU: one SDPA call per document


def test_kernel_of_sees_eager_attention():
    q = torch.randn(1, 2, 8, 4)
    assert kernel_of(lambda: torch.softmax(q @ q.transpose(-1, -2), -1) @ q, "cpu")[0] == "eager"


def test_document_benchmark_compares_strategies_with_the_loop():
    rows = bench_document_attention(
        [5, 30, 12], device="cpu", dtype=torch.float32, heads=4, kv_heads=2, head_dim=16,
        warmup=0, reps=1,
    )  # fmt: skip
    by = {r["strategy"]: r for r in rows}
    assert list(by) == ["loop", "mask", "varlen", "flex"]
    assert by["loop"]["ms"] > 0 and by["mask"]["ms"] > 0
    assert by["mask"]["max_out_diff"] < 1e-5 and by["mask"]["max_grad_diff"] < 1e-4
    assert by["varlen"]["ms"] is None and "CUDA" in by["varlen"]["note"]
    assert by["flex"]["backward"] is False and by["flex"]["max_out_diff"] < 1e-5
    soft = bench_document_attention(
        [5, 30], device="cpu", dtype=torch.float32, heads=2, kv_heads=1, head_dim=8,
        softcap=3.0, strategies=("mask", "flex"), warmup=0, reps=1,
    )  # fmt: skip
    assert [r["strategy"] for r in soft] == ["mask", "flex"] and soft[1]["max_out_diff"] < 1e-5
