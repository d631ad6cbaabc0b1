"""Grouped-query self-attention on ``F.scaled_dot_product_attention``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.modules.kv_cache import KVCache
from tunesmith.modules.rope import apply_rope

__all__ = ["MultiHeadAttention"]


#: Per-document attention lengths are rounded up to a multiple of this for reduced-precision
#: CPU tensors. The CPU flash-attention kernel keeps ~10 MB of state per distinct bf16
#: sequence length (fp32 keeps none), so with one length per document RSS grew by ~40 MB a
#: step; with buckets there are at most ``max_seq_len / 64`` lengths. Costs ~7 % of attention.
CPU_LOW_PRECISION_BUCKET = 64


def _length_bucket(q: Tensor) -> int:
    """Pad per-document attention to a multiple of this (1: no padding)."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return CPU_LOW_PRECISION_BUCKET
    return 1


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped (or multi-) query key/value heads.

    Args:
        embed_dim: model width ``d``.
        num_heads: query heads ``h``.
        num_kv_heads: key/value heads (divides ``num_heads``).
        head_dim: per-head width ``hd``.
        q_proj, k_proj, v_proj: ``[d] -> [h * hd]``, ``[d] -> [kv * hd]``, ``[d] -> [kv * hd]``.
        output_proj: ``[h * hd] -> [d]``.
        q_norm, k_norm: optional norms over ``hd`` applied per head before RoPE (QK-norm).
        scale: softmax scale; default ``hd ** -0.5``.
        softcap: attention logit soft-capping ``cap * tanh(logits / cap)`` (Gemma 2).
        sliding_window: when set, this layer only sees the last ``sliding_window`` keys; the
            decoder builds the matching mask and passes it in.

    Shapes: ``x [b, s, d]``, ``cos, sin [b|1, 1, s, hd]``, ``mask [b|1, s, s_kv]`` bool
    (True = attend) or None for plain causal attention -> ``[b, s, d]``. With ``seq_lens``
    (document lengths summing to ``s``, ``b == 1``) attention is causal within each document
    of the concatenation, one SDPA call per document (no mask, no padding).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        output_proj: nn.Module,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        scale: float | None = None,
        softcap: float | None = None,
        sliding_window: int | None = None,
    ):
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})."
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.output_proj = output_proj
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.scale = head_dim**-0.5 if scale is None else scale
        self.softcap = softcap
        self.sliding_window = sliding_window
        self.kv_cache: KVCache | None = None

    def setup_cache(self, batch_size: int, dtype: torch.dtype, max_seq_len: int) -> None:
        """Attach an empty ``KVCache`` on this module's device."""
        device = next(self.q_proj.parameters()).device
        self.kv_cache = KVCache(
            batch_size, max_seq_len, self.num_kv_heads, self.head_dim, dtype, device
        )

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None = None,
        seq_lens: Sequence[int] | None = None,
    ) -> Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(k, v)
        attn_mask = None if mask is None else mask[:, None]
        if seq_lens is not None:
            out = self._per_document_attention(q, k, v, seq_lens)
        elif self.softcap is None:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=mask is None and s > 1,
                scale=self.scale,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )
        else:
            out = self._softcapped_attention(q, k, v, attn_mask)
        return self.output_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))

    def _per_document_attention(
        self, q: Tensor, k: Tensor, v: Tensor, seq_lens: Sequence[int]
    ) -> Tensor:
        """Causal SDPA per document of ``q [1, h, T, hd]``, ``k, v [1, kv, T, hd]``.

        Each document sees only its own earlier tokens: the result equals a block-causal
        mask over the concatenation, without the ``T x T`` mask or any padded positions.
        """
        if self.kv_cache is not None or self.softcap is not None or q.shape[0] != 1:
            raise ValueError(
                "seq_lens needs batch size 1, no KV cache and no attention softcap; pass a "
                "block-causal mask instead"
            )
        gqa = self.num_kv_heads != self.num_heads
        bucket = _length_bucket(q)
        outs = []
        for qi, ki, vi in zip(
            q.split(seq_lens, dim=2), k.split(seq_lens, dim=2), v.split(seq_lens, dim=2)
        ):
            n = qi.shape[2]
            extra = -n % bucket
            if extra:  # trailing pads: causal, so no real query attends to them
                qi, ki, vi = (F.pad(t, (0, 0, 0, extra)) for t in (qi, ki, vi))
            out = F.scaled_dot_product_attention(
                qi, ki, vi, is_causal=True, scale=self.scale, enable_gqa=gqa
            )
            outs.append(out[:, :, :n] if extra else out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def _softcapped_attention(
        self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None
    ) -> Tensor:
        """Eager attention with ``cap * tanh(logits / cap)`` (SDPA cannot soft-cap)."""
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if attn_mask is None:
            s_q, s_k = q.shape[2], k.shape[2]
            attn_mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril(s_k - s_q)
        scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)
