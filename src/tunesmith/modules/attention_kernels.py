"""Which attention kernel each call gets, and the kernels for concatenated documents.

Two pure decisions, both functions of what is known before the call (device type, dtype,
mask, GQA, soft-cap, window), so they are unit-tested without a GPU:

- :func:`dense_strategy`: one padded/masked/causal SDPA call. On CUDA, SDPA's flash kernel
  takes ``enable_gqa`` but no mask and no fp32, and the memory-efficient kernel takes masks
  and fp32 but not ``enable_gqa``; a GQA call with a mask or in fp32 would fall back to the
  math kernel (O(s^2) fp32 scores), so k/v are expanded to the query heads instead. On CPU
  ``enable_gqa`` is kept (benchmarks/NOTES.md, section 9).
- :func:`document_strategy`: attention causal within each document of a ``[1, T]`` row
  (unpadded or packed training). CPU: one SDPA call per document (``loop``, fastest there,
  NOTES.md section 7), or a dense block-causal mask when a layer soft-caps or its window is
  shorter than a document (``mask``). CUDA: one ``torch.nn.attention.varlen.varlen_attn``
  call (flash, fp16/bf16, sliding windows) or else one flex-attention call with a document
  block mask (soft-cap as ``score_mod``, fp32).

:class:`Documents` carries the document lengths through the (compiled) layers; the kernels
run in :func:`document_attention`, outside torch.compile, so varying lengths never
recompile a layer (``seq_lens`` reached the compiled graph as a Python list before).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CPU_LOW_PRECISION_BUCKET",
    "Documents",
    "dense_attention",
    "dense_strategy",
    "sink_attention",
    "document_attention",
    "document_strategy",
    "flex_available",
    "varlen_available",
]

DenseStrategy = Literal["sdpa", "sdpa_gqa", "sdpa_expand", "eager_softcap"]
DocumentStrategy = Literal["loop", "mask", "varlen", "flex"]

#: Per-document attention lengths are rounded up to a multiple of this for reduced-precision
#: CPU tensors. The CPU flash-attention kernel keeps ~10 MB of state per distinct bf16
#: sequence length (fp32 keeps none), so with one length per document RSS grew by ~40 MB a
#: step; with buckets there are at most ``max_seq_len / 64`` lengths. Costs ~7 % of attention.
CPU_LOW_PRECISION_BUCKET = 64

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def dense_strategy(
    device_type: str, dtype: torch.dtype, *, has_mask: bool, gqa: bool, softcap: bool
) -> DenseStrategy:
    """Kernel for one attention call over ``[b, h, s, hd]`` queries.

    ``sdpa``: plain SDPA (as many k/v heads as query heads); ``sdpa_gqa``: SDPA with
    ``enable_gqa=True``; ``sdpa_expand``: k/v ``repeat_interleave``d to the query heads, then
    SDPA (CUDA with a mask or outside fp16/bf16, where ``enable_gqa`` rules out the flash and
    memory-efficient kernels); ``eager_softcap``: matmul + ``tanh`` soft-cap + softmax.
    """
    if softcap:
        return "eager_softcap"
    if not gqa:
        return "sdpa"
    if device_type == "cuda" and (has_mask or dtype not in _LOW_PRECISION):
        return "sdpa_expand"
    return "sdpa_gqa"


def document_strategy(
    device_type: str,
    dtype: torch.dtype,
    *,
    softcap: bool,
    window: int | None,
    max_len: int,
    head_dim: int,
    varlen_ok: bool,
    flex_ok: bool,
) -> DocumentStrategy:
    """Kernel for attention causal within each document of a ``[1, T]`` row.

    ``loop``: one SDPA call per document; ``mask``: one SDPA (or soft-capped eager) call with
    the dense ``[T, T]`` block-causal mask; ``varlen``: one flash ``varlen_attn`` call
    (``varlen_ok``: CUDA flash kernels present); ``flex``: one compiled flex-attention call
    with a document block mask (``flex_ok``: flex + Triton present). ``window`` is the
    layer's sliding window (None: full causal), ``max_len`` the longest document.
    """
    windowed = window is not None and window < max_len
    if device_type == "cuda":
        if varlen_ok and not softcap and dtype in _LOW_PRECISION and head_dim <= 256:
            return "varlen"
        if flex_ok:
            return "flex"
    return "mask" if softcap or windowed else "loop"


@functools.cache
def varlen_available() -> bool:
    """True where ``torch.nn.attention.varlen.varlen_attn`` can run (CUDA flash, sm80+)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    if not torch.cuda.is_available() or not torch.backends.cuda.is_flash_attention_available():
        return False
    return torch.cuda.get_device_capability() >= (8, 0)


@functools.cache
def flex_available() -> bool:
    """True where compiled flex attention can run (CUDA with Triton)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return torch.cuda.is_available() and has_triton()


def _expand_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def _softcapped(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, cap: float):
    """Eager attention with ``cap * tanh(logits / cap)`` (SDPA cannot soft-cap)."""
    k, v = _expand_kv(q, k, v)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    scores = torch.tanh(scores / cap) * cap
    if mask is None:
        s_q, s_k = q.shape[2], k.shape[2]
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril(s_k - s_q)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def sink_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, sinks: Tensor
) -> Tensor:
    """Attention with a learned sink logit per head (gpt-oss): the softmax runs over the keys
    plus one extra logit ``sinks[h]`` whose probability is dropped (fp32 softmax, eager).

    ``q [b, h, s, hd]``, ``k, v [b, kv, s_kv, hd]``, ``mask [b|1, 1, s, s_kv]`` bool or None
    (causal), ``sinks [h]`` -> ``[b, h, s, hd]``.
    """
    k, v = _expand_kv(q, k, v)
    scores = torch.matmul(q, k.transpose(-2, -1)).float() * scale
    s_q, s_k = q.shape[-2], k.shape[-2]
    if mask is None:
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril(s_k - s_q)
    scores = scores.masked_fill(~mask, float("-inf"))
    sink = sinks.float().reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.matmul(probs.to(q.dtype), v)


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    scale: float,
    softcap: float | None = None,
    strategy: DenseStrategy | None = None,
) -> Tensor:
    """``q [b, h, s, hd]``, ``k, v [b, kv, s_kv, hd]``, ``mask [b|1, 1, s, s_kv]`` bool (True =
    attend) or None for causal -> ``[b, h, s, hd]``. ``strategy`` defaults to
    :func:`dense_strategy` for these tensors."""
    gqa = k.shape[1] != q.shape[1]
    if strategy is None:
        strategy = dense_strategy(
            q.device.type, q.dtype, has_mask=mask is not None, gqa=gqa, softcap=bool(softcap)
        )
    if strategy == "eager_softcap":
        assert softcap is not None
        return _softcapped(q, k, v, mask, scale, softcap)
    if strategy == "sdpa_expand":
        k, v = _expand_kv(q, k, v)
    is_causal = mask is None and q.shape[2] > 1
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=strategy == "sdpa_gqa"
    )


class Documents:
    """Lengths of the documents concatenated in one ``[1, T]`` row, and what kernels need.

    Built once per forward (outside any compiled region) and passed to every layer as
    ``seq_lens``; tensors derived from it (``cu_seqlens``, document ids, masks) are built on
    first use and shared by all layers of that forward. Compiled layers never look inside
    (only :func:`document_attention`, which runs eagerly), so new lengths do not recompile.
    """

    def __init__(self, seq_lens: Sequence[int], device: torch.device | str):
        self.seq_lens = tuple(int(n) for n in seq_lens)
        self.total = sum(self.seq_lens)
        self.max_len = max(self.seq_lens, default=0)
        self.device = torch.device(device)
        self._cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.seq_lens)

    def __repr__(self) -> str:
        return f"Documents({list(self.seq_lens)})"

    def _host_to_device(self, t: Tensor) -> Tensor:
        if self.device.type == "cuda":  # pinned + non_blocking: no stream sync for the copy
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def cu_seqlens(self) -> Tensor:
        """``[n + 1]`` int32 cumulative offsets ``0, l0, l0 + l1, ...`` on the device."""
        if "cu" not in self._cache:
            lens = torch.tensor((0, *self.seq_lens), dtype=torch.int32)
            self._cache["cu"] = self._host_to_device(lens.cumsum(0, dtype=torch.int32))
        return self._cache["cu"]

    def document_ids(self) -> Tensor:
        """``[T]`` int64: index of the document each position belongs to, on the device."""
        if "ids" not in self._cache:
            ids = torch.repeat_interleave(
                torch.arange(len(self.seq_lens)), torch.tensor(self.seq_lens, dtype=torch.long)
            )
            self._cache["ids"] = self._host_to_device(ids)
        return self._cache["ids"]

    def dense_mask(self, window: int | None = None) -> Tensor:
        """``[1, 1, T, T]`` bool block-causal mask (ANDed with the sliding-window band)."""
        window = window if window is not None and window < self.max_len else None
        key = ("mask", window)
        if key not in self._cache:
            from tunesmith.modules.masks import packed_causal_mask, sliding_window_band

            mask = packed_causal_mask(self.document_ids()[None])
            if window is not None:
                idx = torch.arange(self.total, device=self.device)
                mask = mask & sliding_window_band(idx, idx, window)[None]
            self._cache[key] = mask[:, None]
        return self._cache[key]

    def block_mask(self, window: int | None = None) -> Any:
        """flex-attention ``BlockMask`` of the same block-causal (+ window) pattern."""
        window = window if window is not None and window < self.max_len else None
        key = ("block", window)
        if key not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            ids = self.document_ids()

            def mask_mod(b, h, q_idx, kv_idx):
                visible = (ids[q_idx] == ids[kv_idx]) & (kv_idx <= q_idx)
                if window is not None:
                    visible = visible & (q_idx - kv_idx < window)
                return visible

            self._cache[key] = create_block_mask(
                mask_mod, None, None, self.total, self.total, device=self.device
            )
        return self._cache[key]


def _length_bucket(q: Tensor) -> int:
    """Pad per-document attention to a multiple of this (1: no padding)."""
    if q.device.type == "cpu" and q.dtype in _LOW_PRECISION:
        return CPU_LOW_PRECISION_BUCKET
    return 1


def _loop(q: Tensor, k: Tensor, v: Tensor, docs: Documents, scale: float, bucket: int) -> Tensor:
    """Causal SDPA per document; bf16/fp16 on CPU pad each to a multiple of ``bucket``."""
    gqa = k.shape[1] != q.shape[1]
    lens = list(docs.seq_lens)
    outs = []
    for qi, ki, vi in zip(q.split(lens, dim=2), k.split(lens, dim=2), v.split(lens, dim=2)):
        n = qi.shape[2]
        extra = -n % bucket
        if extra:  # trailing pads: causal, so no real query attends to them
            qi, ki, vi = (F.pad(t, (0, 0, 0, extra)) for t in (qi, ki, vi))
        out = F.scaled_dot_product_attention(
            qi, ki, vi, is_causal=True, scale=scale, enable_gqa=gqa
        )
        outs.append(out[:, :, :n] if extra else out)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _varlen(
    q: Tensor, k: Tensor, v: Tensor, docs: Documents, scale: float, window: int | None
) -> Tensor:
    from torch.nn.attention.varlen import varlen_attn

    cu = docs.cu_seqlens()
    # flash's window (left, right): key j visible iff i - left <= j <= i + right; ours is
    # 0 <= i - j < window, so left = window - 1. (-1, 0) is plain causal.
    left = -1 if window is None or window >= docs.max_len else window - 1
    out = varlen_attn(
        q[0].transpose(0, 1),  # [T, h, hd]
        k[0].transpose(0, 1),
        v[0].transpose(0, 1),
        cu,
        cu,
        docs.max_len,
        docs.max_len,
        scale=scale,
        window_size=(left, 0),
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return out.transpose(0, 1)[None]


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    docs: Documents,
    scale: float,
    softcap: float | None,
    window: int | None,
) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if softcap is not None:
        cap = softcap

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.tanh(score / cap) * cap

    window = window if window is not None and window < docs.max_len else None
    fn = _compiled_flex() if q.device.type == "cuda" else flex_attention  # eager: CPU tests
    return fn(
        q,
        k,
        v,
        score_mod=score_mod,
        block_mask=docs.block_mask(window),
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )


@torch.compiler.disable
def document_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    docs: Documents,
    *,
    scale: float,
    softcap: float | None = None,
    window: int | None = None,
    strategy: DocumentStrategy | None = None,
) -> Tensor:
    """Attention causal within each document: ``q [1, h, T, hd]``, ``k, v [1, kv, T, hd]``
    -> ``[1, h, T, hd]``; equals SDPA with the block-causal mask of ``docs`` (ANDed with the
    ``window`` band), soft-capped when ``softcap``. ``strategy`` defaults to
    :func:`document_strategy`. Runs outside torch.compile (a graph break in compiled
    layers), so the document lengths never become part of a compiled graph."""
    if q.shape[0] != 1 or q.shape[2] != docs.total:
        raise ValueError(
            f"document attention needs q [1, h, T, hd] with T = sum(seq_lens) = {docs.total}, "
            f"got {tuple(q.shape)}"
        )
    if strategy is None:
        strategy = document_strategy(
            q.device.type,
            q.dtype,
            softcap=softcap is not None,
            window=window,
            max_len=docs.max_len,
            head_dim=q.shape[-1],
            varlen_ok=varlen_available(),
            flex_ok=flex_available(),
        )
    if strategy == "loop":
        if softcap is not None or (window is not None and window < docs.max_len):
            raise ValueError("the per-document loop has no soft-cap or sliding window")
        return _loop(q, k, v, docs, scale, _length_bucket(q))
    if strategy == "varlen":
        if softcap is not None:
            raise ValueError("varlen_attn cannot soft-cap attention logits")
        return _varlen(q, k, v, docs, scale, window)
    if strategy == "flex":
        return _flex(q, k, v, docs, scale, softcap, window)
    if strategy != "mask":
        raise ValueError(f"unknown document attention strategy {strategy!r}")
    return dense_attention(q, k, v, docs.dense_mask(window), scale=scale, softcap=softcap)
