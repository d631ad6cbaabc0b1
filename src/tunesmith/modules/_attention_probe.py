"""Attention-kernel probe and document-attention microbenchmark (CPU or GPU).

Used by the GPU benchmark harness (``benchmarks/gpu``) and runnable on its own::

    python -m tunesmith.modules._attention_probe --device cuda --dtype bf16

- :func:`probe_sdpa_backends`: for each call shape the models make (causal, masked, KV-cache
  decode, concatenated documents; MHA and GQA), which kernel actually runs, read from the
  profiler's op names (flash / memory-efficient / cuDNN / math / varlen / flex), for
  tunesmith's choice (``attention_kernels``) and for plain ``enable_gqa=True`` SDPA.
- :func:`bench_document_attention`: forward + backward time of every document-attention
  strategy (``loop``, ``mask``, ``varlen``, ``flex``) on one ``[1, T]`` row of documents, and
  each one's largest output / gradient difference from the per-document loop.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.modules.attention_kernels import (
    Documents,
    dense_attention,
    document_attention,
    document_strategy,
    flex_available,
    varlen_available,
)

__all__ = ["bench_document_attention", "kernel_of", "probe_sdpa_backends"]

#: profiler op-name fragment -> kernel name (first match wins)
_KERNELS = (
    ("_flash_attention_forward", "varlen-flash"),
    ("flex_attention", "flex"),
    ("_scaled_dot_product_flash_attention_for_cpu", "flash-cpu"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "mem-efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_fused_attention_overrideable", "fused-overrideable"),
    ("_scaled_dot_product_attention_math", "math"),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_of(fn: Callable[[], Any], device: torch.device | str) -> tuple[str, list[str]]:
    """Run ``fn`` once under the profiler; return (kernel name, attention op names seen).

    The kernel is the first of :data:`_KERNELS` whose fragment appears among the op names;
    ``eager`` when attention ran as plain matmul + softmax (e.g. soft-capped layers).
    """
    device = torch.device(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        _sync(device)
    names = sorted({e.key for e in prof.key_averages()})
    seen = [n for n in names if "attention" in n or "flex" in n]
    for fragment, kernel in _KERNELS:
        if any(fragment in n for n in names):
            return kernel, seen
    return ("eager" if any("softmax" in n for n in names) else "unknown"), seen


def _qkv(b, h, kv, s, hd, dtype, device, grad=True, kv_len=None):
    kv_len = s if kv_len is None else kv_len
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_(grad)

    return rand(b, h, s, hd), rand(b, kv, kv_len, hd), rand(b, kv, kv_len, hd)


def probe_sdpa_backends(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    *,
    heads: int = 32,
    kv_heads: int = 8,
    head_dim: int = 64,
    seq_len: int = 2048,
    batch: int = 2,
    seq_lens: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Which kernel each attention call shape gets (forward + backward where it trains).

    Returns one row per (call, mode): ``call`` (``causal``, ``masked``, ``decode`` (KV cache,
    one query), ``documents``), ``gqa`` (bool), ``mode`` (``tunesmith``: the strategy our
    modules choose; ``enable_gqa``: plain SDPA with ``enable_gqa=True``, the old choice),
    ``strategy``, ``kernel`` and the attention ``ops`` seen. Defaults are Llama-3.2-1B's
    attention shape at seq 2048, batch 2.
    """
    device = torch.device(device)
    lens = list(seq_lens or _default_lens(seq_len))
    rows: list[dict[str, Any]] = []
    for kv in sorted({heads, kv_heads}, reverse=True):
        gqa = kv != heads
        for call in ("causal", "masked", "decode"):
            s = 1 if call == "decode" else seq_len
            kv_len = seq_len if call == "decode" else s
            q, k, v = _qkv(batch, heads, kv, s, head_dim, dtype, device, call != "decode", kv_len)
            mask = None
            if call != "causal":
                mask = torch.ones(s, kv_len, dtype=torch.bool, device=device).tril(kv_len - s)
                mask = mask[None, None].expand(batch, 1, s, kv_len)

            def ours(q=q, k=k, v=v, mask=mask):
                out = dense_attention(q, k, v, mask, scale=head_dim**-0.5)
                if out.requires_grad:
                    out.sum().backward()

            def plain(q=q, k=k, v=v, mask=mask):
                out = F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=mask,
                    is_causal=mask is None,
                    enable_gqa=k.shape[1] != q.shape[1],
                )
                if out.requires_grad:
                    out.sum().backward()

            from tunesmith.modules.attention_kernels import dense_strategy

            strategy = dense_strategy(
                device.type, dtype, has_mask=mask is not None, gqa=gqa, softcap=False
            )
            for mode, fn, strat in (("tunesmith", ours, strategy), ("enable_gqa", plain, "-")):
                kernel, ops = _safe_kernel(fn, device)
                rows.append(
                    {"call": call, "gqa": gqa, "mode": mode, "strategy": strat,
                     "kernel": kernel, "ops": ops}
                )  # fmt: skip
        docs = Documents(lens, device)
        strategy = _document_default(device, dtype, head_dim, docs)
        grad = not (device.type == "cpu" and strategy == "flex")  # no flex backward on CPU
        q, k, v = _qkv(1, heads, kv, docs.total, head_dim, dtype, device, grad)

        def run_docs(q=q, k=k, v=v, docs=docs):
            out = document_attention(q, k, v, docs, scale=head_dim**-0.5)
            if out.requires_grad:
                out.sum().backward()

        kernel, ops = _safe_kernel(run_docs, device)
        rows.append(
            {"call": "documents", "gqa": gqa, "mode": "tunesmith", "strategy": strategy,
             "kernel": kernel, "ops": ops}
        )  # fmt: skip
    return rows


def _safe_kernel(fn: Callable[[], Any], device: torch.device) -> tuple[str, list[str]]:
    try:
        return kernel_of(fn, device)
    except (RuntimeError, NotImplementedError) as err:  # a kernel this build lacks
        return f"error: {str(err).splitlines()[0][:120]}", []


def _default_lens(total: int) -> list[int]:
    """Document lengths like an instruct dataset's packs: 37..600 tokens, summing to total."""
    gen = torch.Generator().manual_seed(0)
    lens, left = [], total
    while left > 0:
        n = min(left, int(torch.randint(37, 600, (1,), generator=gen)))
        lens.append(n)
        left -= n
    return lens


def _document_default(device: torch.device, dtype: torch.dtype, head_dim: int, docs) -> str:
    return document_strategy(
        device.type,
        dtype,
        softcap=False,
        window=None,
        max_len=docs.max_len,
        head_dim=head_dim,
        varlen_ok=varlen_available(),
        flex_ok=flex_available(),
    )


def bench_document_attention(
    seq_lens: Sequence[int] | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    heads: int = 32,
    kv_heads: int = 8,
    head_dim: int = 64,
    softcap: float | None = None,
    window: int | None = None,
    strategies: Sequence[str] = ("loop", "mask", "varlen", "flex"),
    warmup: int = 2,
    reps: int = 5,
) -> list[dict[str, Any]]:
    """Time forward + backward of each document-attention strategy on one row of documents.

    Returns one row per strategy: ``strategy``, ``ms`` (median over ``reps``, None when it
    cannot run here), ``backward`` (False where only the forward runs: flex on CPU),
    ``max_out_diff`` / ``max_grad_diff`` against the reference (``loop``, or ``mask`` when
    the loop cannot express soft-cap / window), ``note`` (why a strategy was skipped).
    Default lengths: 4096 tokens of instruct-sized documents (two packs of 2048).
    """
    device = torch.device(device)
    docs = Documents(list(seq_lens or _default_lens(4096)), device)
    scale = head_dim**-0.5
    loop_ok = softcap is None and (window is None or window >= docs.max_len)
    ref_name = "loop" if loop_ok else "mask"
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]] = {}
    order = [ref_name] + [s for s in strategies if s != ref_name]
    for strategy in order:
        row: dict[str, Any] = {"strategy": strategy, "ms": None, "backward": True, "note": ""}
        results[strategy] = row
        if strategy == "loop" and not loop_ok:
            row["note"] = "the loop has no soft-cap / short window"
            continue
        if strategy == "varlen" and (not varlen_available() or softcap is not None):
            row["note"] = "needs CUDA flash (sm80+), fp16/bf16, no soft-cap"
            continue
        if strategy == "flex" and device.type == "cuda" and not flex_available():
            row["note"] = "needs Triton"
            continue
        grad = not (strategy == "flex" and device.type == "cpu")
        row["backward"] = grad
        q, k, v = _qkv(1, heads, kv_heads, docs.total, head_dim, dtype, device, grad)

        def step(q=q, k=k, v=v, strategy=strategy, grad=grad):
            out = document_attention(
                q, k, v, docs, scale=scale, softcap=softcap, window=window, strategy=strategy
            )
            grads = None
            if grad:
                grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
            return out.detach(), grads

        try:
            for _ in range(warmup):
                step()
            times = []
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                outputs[strategy] = step()
                _sync(device)
                times.append(time.perf_counter() - t0)
        except (RuntimeError, NotImplementedError) as err:
            row["note"] = f"error: {str(err).splitlines()[0][:120]}"
            continue
        row["ms"] = round(sorted(times)[len(times) // 2] * 1e3, 3)
    ref = outputs.get(ref_name)
    for strategy, row in results.items():
        got = outputs.get(strategy)
        if ref is None or got is None:
            continue
        row["max_out_diff"] = float((got[0].float() - ref[0].float()).abs().max())
        if got[1] is not None and ref[1] is not None:
            row["max_grad_diff"] = max(
                float((a.float() - b.float()).abs().max()) for a, b in zip(got[1], ref[1])
            )
    base = results[ref_name]["ms"]
    for row in results.values():
        if base and row["ms"]:
            row["speedup_vs_" + ref_name] = round(base / row["ms"], 3)
    return [results[s] for s in order if s in strategies or s == ref_name]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    report = {
        "probe": probe_sdpa_backends(args.device, dtype, seq_len=args.seq_len),
        "documents": bench_document_attention(
            _default_lens(2 * args.seq_len), device=args.device, dtype=dtype, reps=args.reps
        ),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
