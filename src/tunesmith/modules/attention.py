"""Grouped-query self-attention on ``F.scaled_dot_product_attention``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tunesmith.modules.attention_kernels import (
    Documents,
    dense_attention,
    document_attention,
    sink_attention,
)
from tunesmith.modules.kv_cache import KVCache
from tunesmith.modules.rope import apply_rope

if TYPE_CHECKING:
    from tunesmith.training.context_parallel import ContextParallel

__all__ = ["MultiHeadAttention"]


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
            decoder builds the matching mask and passes it in (with ``seq_lens`` the layer
            applies its own window).
        sinks: a learned sink logit per query head (parameter ``sinks [h]``, gpt-oss): the
            softmax also runs over it and drops its share (``attention_kernels.sink_attention``,
            eager; with ``seq_lens`` over the documents' dense block-causal mask).
        use_rope: False skips RoPE in this layer (Llama 4's NoPE layers).
        chunk_size: chunked local attention (Llama 4): a query sees only the keys of its own
            ``chunk_size`` block of positions (the decoder builds the mask; with ``seq_lens``
            this layer builds it from the documents' positions).
        temperature: ``(floor_scale, attn_scale)``: queries at slot ``p`` are multiplied by
            ``log1p(floor((p + 1) / floor_scale)) * attn_scale + 1`` (Llama 4's NoPE layers;
            ``p`` counts cache slots, or positions within each document with ``seq_lens``).
        v_norm: optional norm over ``hd`` on the values (Gemma 4: weightless RMS norm).
        kv_sharing: Gemma 4's cross-layer KV sharing, ``(mode, group)``: ``"store"`` puts
            this layer's keys / values (after RoPE and the cache) in the ``shared_kv`` dict
            of the forward under ``group``; ``"reuse"`` takes them from there instead of
            computing its own (such a layer has no ``k_proj`` / ``v_proj`` / ``k_norm``,
            pass None, and no KV cache).

    ``v_proj=None`` (with ``kv_sharing`` not ``"reuse"``) makes the values the key
    projection's output before ``k_norm`` and RoPE (Gemma 4's ``attention_k_eq_v``).

    Shapes: ``x [b, s, d]``, ``cos, sin [b|1, 1, s, hd]`` (both None: no RoPE, as in vision
    encoders and cross-attention), ``mask [b|1, s, s_kv]`` bool (True = attend) or None for
    plain causal attention -> ``[b, s, d]``. With ``kv_input [b, s_kv, d_kv]`` keys and values
    come from it (cross-attention: no RoPE on them, no KV cache, and a None mask means every
    query sees every key). With ``seq_lens``
    (a :class:`~tunesmith.modules.attention_kernels.Documents` or document lengths summing to
    ``s``, ``b == 1``) attention is causal within each document of the concatenation; the
    kernel (per-document SDPA on CPU, one varlen / flex call on CUDA) is chosen by
    ``attention_kernels.document_strategy``, the dense one by ``dense_strategy``.

    With ``context_parallel`` set (``training.context_parallel``), ``x`` holds this rank's
    ``s = S / cp`` tokens. Method ``allgather``: keys/values are gathered to ``S`` and ``mask
    [b|1, s, S]`` is required (this rank's rows of the global mask, columns in gathered
    order). Method ``ulysses``: ``mask`` and ``seq_lens`` are None; heads are exchanged for
    tokens around the kernel (``training.ulysses.ulysses_attention``).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        q_proj: nn.Module,
        k_proj: nn.Module | None,
        v_proj: nn.Module | None,
        output_proj: nn.Module,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        scale: float | None = None,
        softcap: float | None = None,
        sliding_window: int | None = None,
        sinks: bool = False,
        use_rope: bool = True,
        chunk_size: int | None = None,
        temperature: tuple[float, float] | None = None,
        pos_embeddings: nn.Module | None = None,
        kv_cache: KVCache | None = None,
        max_seq_len: int = 4096,
        is_causal: bool = True,
        attn_dropout: float = 0.0,
        v_norm: nn.Module | None = None,
        kv_sharing: tuple[str, str] | None = None,
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
        self.sinks = nn.Parameter(torch.zeros(num_heads)) if sinks else None
        self.use_rope = use_rope
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.v_norm = v_norm
        if kv_sharing is not None and kv_sharing[0] not in ("store", "reuse"):
            raise ValueError(f"kv_sharing mode {kv_sharing[0]!r} must be 'store' or 'reuse'")
        if kv_sharing is not None and kv_sharing[0] == "reuse" and k_proj is not None:
            raise ValueError("a layer reusing shared keys / values has no k_proj / v_proj")
        self.kv_sharing = kv_sharing
        self.kv_cache: KVCache | None = kv_cache
        # torchtune's calling convention (see ``forward``): a RoPE module applied to q and k
        # ``[b, s, h, hd]`` with ``input_pos``; ``is_causal`` for calls without a mask
        self.pos_embeddings = pos_embeddings
        self.max_seq_len = max_seq_len
        self.is_causal = is_causal
        self.attn_dropout = 0.0  # accepted for torchtune's signature; kernels run without
        del attn_dropout
        # torchtune's switch (``modules.disable_kv_cache``): False runs as if no cache were set
        self.cache_enabled = False
        # a ``training.context_parallel.ContextParallel`` while training context parallel:
        # keys/values all-gathered over its group (``mask``: this rank's rows), or heads
        # exchanged for tokens (its ``method``)
        self.context_parallel: ContextParallel | None = None

    def setup_cache(self, batch_size: int, dtype: torch.dtype, max_seq_len: int) -> None:
        """Attach an empty ``KVCache`` on this module's device (none when reusing shared
        keys / values: the producing layer's cache holds them)."""
        self.cache_enabled = True  # also for a reusing layer: the decoder reads every layer's
        if self.kv_sharing is not None and self.kv_sharing[0] == "reuse":
            return
        device = next(self.q_proj.parameters()).device
        self.kv_cache = KVCache(
            batch_size, max_seq_len, self.num_kv_heads, self.head_dim, dtype, device
        )
        self.cache_enabled = True

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None = None,
        sin: Tensor | None = None,
        mask: Tensor | None = None,
        seq_lens: Documents | Sequence[int] | None = None,
        *,
        kv_input: Tensor | None = None,
        input_pos: Tensor | None = None,
        shared_kv: dict[str, tuple[Tensor, Tensor]] | None = None,
        q_scale: Tensor | None = None,
    ) -> Tensor:
        """tunesmith's call ``(x, cos, sin, mask, seq_lens, kv_input=)`` (see the class doc),
        or torchtune's ``(x, y, mask=, input_pos=)``: ``y [b, s_y, d]`` gives keys and values
        (``y = x`` for self-attention), ``pos_embeddings`` rotates q and k at ``input_pos``,
        ``mask [b, s, s_y]`` (or ``[b, s, max_seq_len]`` over cache slots) True = attend,
        None = causal when ``is_causal`` and no cache, else every key. ``x [b, s, d] ->
        [b, s, d]``; ``q_scale [b or 1, s]`` multiplies the queries after RoPE (Ministral 3's
        position-dependent temperature, cast to the queries' dtype)."""
        if cos is not None and cos.dim() == 3:  # torchtune's y
            return self._torchtune_call(x, cos, mask, input_pos)
        b, s, _ = x.shape
        if kv_input is not None:
            return self._cross(x, kv_input, mask)
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.temperature is not None:
            q = self._temper(q, seq_lens)
        q = q.transpose(1, 2)
        rope = self.use_rope and cos is not None and sin is not None
        if rope:
            q = apply_rope(q, cos, sin)
        if q_scale is not None:
            q = q * q_scale[:, None, :, None].to(q.dtype)
        if self.kv_sharing is not None and self.kv_sharing[0] == "reuse":
            if shared_kv is None or self.kv_sharing[1] not in shared_kv:
                raise RuntimeError(
                    f"layer reuses the {self.kv_sharing[1]} keys / values of an earlier layer, "
                    "but none were stored in this forward (run the whole decoder)"
                )
            k, v = shared_kv[self.kv_sharing[1]]
        else:
            k, v = self._keys_values(x, cos if rope else None, sin)
            if self.kv_sharing is not None:
                if shared_kv is None:
                    raise RuntimeError("a KV-sharing layer needs the decoder's shared_kv dict")
                shared_kv[self.kv_sharing[1]] = (k, v)
        cache = self.kv_cache if self.cache_enabled else None
        if self.context_parallel is not None and self.context_parallel.method == "ulysses":
            from tunesmith.training.ulysses import ulysses_attention

            if mask is not None or seq_lens is not None:
                raise ValueError(
                    "head-sharded context-parallel attention takes its documents from "
                    "ContextParallel.shard, not a mask or seq_lens"
                )
            out = ulysses_attention(
                q, k, v, self.context_parallel, scale=self.scale, softcap=self.softcap,
                sinks=self.sinks,
            )  # fmt: skip
            return self.output_proj(out.transpose(1, 2).reshape(b, s, -1))
        if self.context_parallel is not None:  # local queries, every rank's keys
            if mask is None or seq_lens is not None:
                raise ValueError(
                    "context-parallel attention needs this rank's rows of the mask "
                    "(ContextParallel.shard), not seq_lens or mask=None"
                )
            k, v = self.context_parallel.gather_kv(k, v)
            if self.sinks is None and self.softcap is None:  # SDPA: one additive mask
                mask = self.context_parallel.additive_mask(mask, q.dtype)
        if seq_lens is not None:
            if cache is not None or b != 1 or mask is not None:
                raise ValueError(
                    "seq_lens needs batch size 1, no mask and no KV cache; pass a block-causal "
                    "mask instead"
                )
            docs = seq_lens if isinstance(seq_lens, Documents) else Documents(seq_lens, x.device)
            if self.chunk_size is not None and docs.max_len > self.chunk_size:
                pos = _document_positions(docs, x.device) // self.chunk_size
                chunk_mask = docs.dense_mask() & (pos[:, None] == pos[None, :])
                out = dense_attention(q, k, v, chunk_mask, scale=self.scale, softcap=self.softcap)
                return self.output_proj(out.transpose(1, 2).reshape(b, s, -1))
            if self.sinks is not None:
                out = sink_attention(
                    q, k, v, docs.dense_mask(self.sliding_window), self.scale, self.sinks
                )
                return self.output_proj(out.transpose(1, 2).reshape(b, s, -1))
            out = document_attention(
                q, k, v, docs, scale=self.scale, softcap=self.softcap, window=self.sliding_window
            )
        else:
            attn_mask = None if mask is None else mask[:, None]
            if self.sinks is not None:
                out = sink_attention(q, k, v, attn_mask, self.scale, self.sinks)
            else:
                out = dense_attention(q, k, v, attn_mask, scale=self.scale, softcap=self.softcap)
        return self.output_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))

    def _keys_values(
        self, x: Tensor, cos: Tensor | None, sin: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``k, v [b, kv, s_kv, hd]`` of ``x [b, s, d]``: projected, normed, rotated (when
        ``cos`` is given) and appended to the KV cache."""
        b, s, _ = x.shape
        assert self.k_proj is not None
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = k if self.v_proj is None else self.v_proj(x).view(b, s, self.num_kv_heads, -1)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.v_norm is not None:
            v = self.v_norm(v)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if cos is not None and sin is not None:
            k = apply_rope(k, cos, sin)
        if self.kv_cache is not None and self.cache_enabled:
            k, v = self.kv_cache.update(k, v)
        return k, v

    def _temper(self, q: Tensor, seq_lens: Documents | Sequence[int] | None) -> Tensor:
        """``q [b, s, h, hd]`` times the per-position temperature (see ``temperature``)."""
        assert self.temperature is not None
        floor_scale, attn_scale = self.temperature
        s = q.shape[1]
        if seq_lens is not None:
            pos = _document_positions(seq_lens, q.device)
        else:
            start = self.kv_cache.size if self.kv_cache is not None and self.cache_enabled else 0
            pos = torch.arange(start, start + s, device=q.device)
        scale = torch.log1p(torch.floor((pos.float() + 1.0) / floor_scale)) * attn_scale + 1.0
        return (q * scale[None, :, None, None]).to(q.dtype)

    def _torchtune_call(
        self, x: Tensor, y: Tensor, mask: Tensor | None, input_pos: Tensor | None
    ) -> Tensor:
        """torchtune's attention: RoPE by ``pos_embeddings`` before the QK norms."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(y).view(b, y.shape[1], self.num_kv_heads, self.head_dim)
        v = self.v_proj(y).view(b, y.shape[1], self.num_kv_heads, self.head_dim)
        if self.pos_embeddings is not None:
            q = self.pos_embeddings(q, input_pos=input_pos)
            k = self.pos_embeddings(k, input_pos=input_pos)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        cached = self.kv_cache is not None and self.cache_enabled
        if cached:
            assert self.kv_cache is not None
            k, v = self.kv_cache.update(k, v)
        if mask is not None:
            mask = mask[:, None, :, : k.shape[2]]
        elif cached or not self.is_causal:  # every key (torchtune: no causal mask with a cache)
            mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=x.device)
        out = dense_attention(q, k, v, mask, scale=self.scale, softcap=self.softcap)
        return self.output_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))

    def _cross(self, x: Tensor, kv_input: Tensor, mask: Tensor | None) -> Tensor:
        """Queries from ``x [b, s, d]``, keys/values from ``kv_input [b, s_kv, d_kv]``."""
        b, s, _ = x.shape
        s_kv = kv_input.shape[1]
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(kv_input).view(b, s_kv, self.num_kv_heads, self.head_dim)
        v = self.v_proj(kv_input).view(b, s_kv, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if mask is None:  # not causal: every query sees every key
            mask = torch.ones(1, 1, 1, dtype=torch.bool, device=x.device)
        out = dense_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            mask[:, None],
            scale=self.scale,
            softcap=self.softcap,
        )
        return self.output_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


def _document_positions(seq_lens: Documents | Sequence[int], device: torch.device) -> Tensor:
    """``[T]`` position of every token within its document."""
    lens = seq_lens.seq_lens if isinstance(seq_lens, Documents) else tuple(seq_lens)
    return torch.cat([torch.arange(n, device=device) for n in lens])
