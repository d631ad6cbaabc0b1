"""Attention on the GPU: which SDPA kernel each call shape gets, and varlen vs a Python loop.

* :func:`probe_kernels`: runs one forward per call shape (raw SDPA, and tunesmith's
  ``MultiHeadAttention`` with the shapes training, packed training and KV-cached generation
  use) under ``torch.profiler`` and reports the attention ops that ran
  (``aten::_scaled_dot_product_flash_attention`` / ``_efficient_`` / ``_cudnn_`` / ``_math``,
  varlen, flex). Works on CPU too (the CPU kernels' names).
* :func:`document_microbench`: forward + backward of attention causal within each document
  of one ``[1, T]`` row, four ways: one SDPA call per document (``loop``), one
  ``torch.nn.attention.varlen.varlen_attn`` call, one flex-attention call with a document
  block mask, one SDPA call with a dense ``[T, T]`` block-causal mask.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

_ATTN_OPS = ("scaled_dot_product", "varlen", "flex_attention", "flash_attn", "_flash_")


def _attention_ops(fn: Callable[[], Any]) -> list[str]:
    """Names of the attention ops ``fn`` ran (profiler, CPU-side op names)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = []
    for e in prof.events():
        name = e.name
        if any(k in name for k in _ATTN_OPS) and name not in names:
            names.append(name)
    # the innermost op says which kernel ran; the dispatcher wrapper adds nothing
    inner = [n for n in names if n != "aten::scaled_dot_product_attention"]
    return inner or names


def _qkv(b, h, kv, s, s_kv, hd, dtype, device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, s, hd, generator=g).to(device, dtype)
    k = torch.randn(b, kv, s_kv, hd, generator=g).to(device, dtype)
    v = torch.randn(b, kv, s_kv, hd, generator=g).to(device, dtype)
    return q, k, v


def probe_kernels(device: torch.device, seq: int = 2048, hd: int = 64) -> list[dict]:
    """One row per call shape: what ran. ``seq`` is the training length."""
    rows: list[dict] = []
    h, kv = 32, 8

    def record(call: str, dtype, lens: str, mask: str, fn: Callable[[], Any]) -> None:
        row = {
            "call": call,
            "dtype": str(dtype).removeprefix("torch."),
            "heads": f"{h} / {kv}",
            "lens": lens,
            "mask": mask,
        }
        try:
            with torch.no_grad():
                row["kernels"] = _attention_ops(fn)
        except Exception as e:  # a shape no kernel takes is a result, not a crash
            row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
        rows.append(row)

    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = _qkv(2, h, kv, seq, seq, hd, dtype, device)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
        ke, ve = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
        sdpa = F.scaled_dot_product_attention
        lens = f"{seq} x {seq}"
        record(
            "sdpa enable_gqa causal",
            dtype,
            lens,
            "is_causal",
            partial(sdpa, q, k, v, is_causal=True, enable_gqa=True),
        )
        record(
            "sdpa enable_gqa + mask",
            dtype,
            lens,
            "bool [s, s]",
            partial(sdpa, q, k, v, attn_mask=causal, enable_gqa=True),
        )
        record(
            "sdpa expanded k/v + mask",
            dtype,
            lens,
            "bool [s, s]",
            partial(sdpa, q, ke, ve, attn_mask=causal),
        )
    _probe_tunesmith(device, seq, h, kv, hd, record, rows)
    return rows


def _probe_tunesmith(device, seq, h, kv, hd, record, rows: list[dict]) -> None:
    """tunesmith's MultiHeadAttention on the calls its recipes make."""
    from torch import nn

    from tunesmith.modules import MultiHeadAttention, RotaryEmbedding

    dim = h * hd
    for dtype in (torch.bfloat16, torch.float32):
        attn = MultiHeadAttention(
            embed_dim=dim,
            num_heads=h,
            num_kv_heads=kv,
            head_dim=hd,
            q_proj=nn.Linear(dim, dim, bias=False),
            k_proj=nn.Linear(dim, kv * hd, bias=False),
            v_proj=nn.Linear(dim, kv * hd, bias=False),
            output_proj=nn.Linear(dim, dim, bias=False),
        ).to(device, dtype)
        rope = RotaryEmbedding(hd).to(device)
        x = torch.randn(1, seq, dim).to(device, dtype)
        cos, sin = rope(torch.arange(seq, device=device), dtype)
        record(
            "tunesmith causal (unpacked)",
            dtype,
            f"{seq} x {seq}",
            "none",
            partial(attn, x, cos, sin),
        )
        record(
            "tunesmith documents (packed)",
            dtype,
            f"{seq} x {seq}",
            "8 docs (seq_lens)",
            partial(_with_docs, attn, x, cos, sin, [seq // 8] * 8),
        )
        ctx = 256
        xs = torch.randn(1, ctx, dim).to(device, dtype)
        cos_c, sin_c = rope(torch.arange(ctx, device=device), dtype)
        full = torch.ones(ctx, ctx, dtype=torch.bool, device=device).tril()[None]

        def decode_step(
            attn=attn, xs=xs, cos_c=cos_c, sin_c=sin_c, full=full, dtype=dtype, ctx=ctx
        ):
            attn.setup_cache(1, dtype, ctx)
            try:
                attn(xs[:, :-1], cos_c[..., :-1, :], sin_c[..., :-1, :], full[:, :-1, :-1])
                return _attention_ops(
                    lambda: attn(xs[:, -1:], cos_c[..., -1:, :], sin_c[..., -1:, :], full[:, -1:])
                )
            finally:
                attn.kv_cache = None

        row = {
            "call": "tunesmith decode step (KV cache)",
            "dtype": str(dtype)[6:],
            "heads": f"{h} / {kv}",
            "lens": f"1 x {ctx}",
            "mask": "bool [1, ctx]",
        }
        try:
            with torch.no_grad():
                row["kernels"] = decode_step()
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
        rows.append(row)


def _with_docs(attn, x, cos, sin, lens):
    """tunesmith's document attention, whichever keyword this version takes."""
    import inspect

    params = inspect.signature(attn.forward).parameters
    if "seq_lens" in params:
        return attn(x, cos, sin, seq_lens=lens)
    if "docs" in params:
        from tunesmith.modules.attention_kernels import Documents

        return attn(x, cos, sin, docs=Documents.from_lengths(lens))
    raise TypeError("no document attention in this tunesmith")


# ------------------------------------------------------------------------------ microbench
def _time(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median ms of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _doc_lengths(total: int, docs: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(total - 1, generator=g)[: docs - 1].add(1).tolist())
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


def document_microbench(
    device: torch.device,
    sizes: tuple[tuple[int, int], ...] = ((4096, 4), (4096, 16), (8192, 64)),
    h: int = 32,
    kv: int = 8,
    hd: int = 64,
    dtype: torch.dtype = torch.bfloat16,
    reps: int = 10,
) -> list[dict]:
    """Forward + backward ms of document-causal attention over ``(tokens, documents)``."""
    out = []
    for total, ndocs in sizes:
        lens = _doc_lengths(total, ndocs, seed=total + ndocs)
        q, k, v = (t.requires_grad_(True) for t in _qkv(1, h, kv, total, total, hd, dtype, device))
        row: dict[str, Any] = {"tokens": total, "docs": ndocs, "dtype": str(dtype)[6:]}

        def loop(q=q, k=k, v=v, lens=lens):
            outs, start = [], 0
            for n in lens:
                sl = slice(start, start + n)
                outs.append(
                    F.scaled_dot_product_attention(
                        q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True, enable_gqa=True
                    )
                )
                start += n
            torch.cat(outs, 2).sum().backward()

        row["loop_ms"] = _try(partial(_time, loop, device, reps), row, "loop")
        ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(device)
        dense = (ids[:, None] == ids[None, :]) & torch.ones(
            total, total, dtype=torch.bool, device=device
        ).tril()
        ke, ve = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)

        def masked(q=q, ke=ke, ve=ve, dense=dense):
            F.scaled_dot_product_attention(q, ke, ve, attn_mask=dense).sum().backward()

        row["mask_ms"] = _try(partial(_time, masked, device, reps), row, "mask")
        cu = torch.tensor(
            [0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device
        )
        if device.type == "cuda":
            varlen = partial(_varlen, q, k, v, cu, max(lens))
            row["varlen_ms"] = _try(partial(_time, varlen, device, reps), row, "varlen")
            flex = partial(_flex, q, k, v, ids)
            row["flex_ms"] = _try(partial(_time, flex, device, reps), row, "flex")
        out.append(row)
    return out


def _try(fn: Callable[[], float], row: dict, name: str) -> float | None:
    try:
        return round(fn(), 3)
    except Exception as e:
        row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:160]}"
        return None


def _varlen(q, k, v, cu, max_len):
    from torch.nn.attention.varlen import varlen_attn

    o = varlen_attn(
        q[0].transpose(0, 1),
        k[0].transpose(0, 1),
        v[0].transpose(0, 1),
        cu,
        cu,
        max_len,
        max_len,
        window_size=(-1, 0),
        enable_gqa=True,
    )
    o.sum().backward()


_FLEX: dict[str, Any] = {}


def _flex(q, k, v, ids):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    key = (ids.data_ptr(), ids.numel())
    if _FLEX.get("key") != key:

        def doc_causal(b, h, qi, ki):
            return (ids[qi] == ids[ki]) & (qi >= ki)

        n = ids.numel()
        _FLEX["mask"] = create_block_mask(doc_causal, None, None, n, n, device=ids.device)
        _FLEX["key"] = key
    _FLEX["fn"](q, k, v, block_mask=_FLEX["mask"], enable_gqa=True).sum().backward()
