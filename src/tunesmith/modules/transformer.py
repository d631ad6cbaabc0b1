"""Decoder-only transformer: ``TransformerSelfAttentionLayer`` and ``TransformerDecoder``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tunesmith.modules.attention import MultiHeadAttention
from tunesmith.modules.attention_kernels import Documents
from tunesmith.modules.kv_cache import KVCacheOverflowError
from tunesmith.modules.masks import sliding_window_band
from tunesmith.modules.moe import FeedForwardWithExperts
from tunesmith.modules.rope import RotaryEmbedding
from tunesmith.modules.tied_linear import TiedLinear

__all__ = ["TransformerSelfAttentionLayer", "TransformerDecoder"]


_TORCHTUNE_CALL: Any = object()
"""Default of ``cos``: the layer was called torchtune's way, ``layer(x, mask=, input_pos=)``."""


class TransformerSelfAttentionLayer(nn.Module):
    """Pre-norm block: ``h = x + sa_scale(attn(sa_norm(x)))``, ``h + mlp_scale(mlp(mlp_norm(h)))``.

    ``sa_scale`` / ``mlp_scale`` are Gemma 2's post-attention / post-feed-forward norms
    (identity when None); ``residual_multiplier`` scales both branch outputs before the
    residual add (Granite). Gemma 4: ``per_layer_gate`` adds the layer's per-layer embedding
    (``modules.per_layer_embeddings.PerLayerInputGate`` of ``per_layer_input [b, s, p]``)
    after the feed-forward block, ``layer_scalar`` multiplies the output by a learned scalar
    (a buffer, as in the checkpoints); ``shared_kv`` (cross-layer KV sharing) and ``q_scale``
    (per-position query scale) are passed to the attention. Shapes: ``x [b, s, d] -> [b, s, d]``.
    """

    def __init__(
        self,
        *,
        attn: MultiHeadAttention,
        mlp: nn.Module,
        sa_norm: nn.Module,
        mlp_norm: nn.Module,
        sa_scale: nn.Module | None = None,
        mlp_scale: nn.Module | None = None,
        residual_multiplier: float | None = None,
        per_layer_gate: nn.Module | None = None,
        layer_scalar: bool = False,
    ):
        super().__init__()
        self.residual_multiplier = residual_multiplier
        self.per_layer_gate = per_layer_gate
        if layer_scalar:
            self.register_buffer("layer_scalar", torch.ones(1))
        else:
            self.layer_scalar = None
        # torchtune's (and transformers') registration order: parameters() and state_dict()
        # list attn, mlp, then the norms, so seeded inits and optimizer states line up
        self.attn = attn
        self.mlp = mlp
        self.sa_norm = sa_norm
        self.mlp_norm = mlp_norm
        self.sa_scale = sa_scale
        self.mlp_scale = mlp_scale

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None = _TORCHTUNE_CALL,
        sin: Tensor | None = None,
        mask: Tensor | None = None,
        seq_lens: Sequence[int] | Documents | None = None,
        *,
        input_pos: Tensor | None = None,
        per_layer_input: Tensor | None = None,
        shared_kv: dict[str, tuple[Tensor, Tensor]] | None = None,
        q_scale: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """tunesmith's call ``(x, cos, sin, mask, seq_lens)`` or torchtune's
        ``(x, mask=, input_pos=)`` (no ``cos, sin``: the attention's ``pos_embeddings`` rotate;
        torchtune's other keywords, ``encoder_input`` / ``encoder_mask``, are ignored as
        torchtune's self-attention layer ignores them). ``q_scale [b or 1, s]``: Ministral 3's
        query temperature, passed to the attention."""
        extra: dict = {} if shared_kv is None else {"shared_kv": shared_kv}
        if q_scale is not None:
            extra["q_scale"] = q_scale
        if cos is _TORCHTUNE_CALL:
            hx = self.sa_norm(x)
            attn_out = self.attn(hx, hx, mask=mask, input_pos=input_pos)
        elif seq_lens is None:
            attn_out = self.attn(self.sa_norm(x), cos, sin, mask, **extra)
        else:  # documents of a concatenated, unpadded batch (see TransformerDecoder.forward)
            attn_out = self.attn(self.sa_norm(x), cos, sin, mask, seq_lens=seq_lens, **extra)
        if self.sa_scale is not None:
            attn_out = self.sa_scale(attn_out)
        if self.residual_multiplier is not None:
            attn_out = attn_out * self.residual_multiplier
        h = x + attn_out
        if isinstance(self.mlp, FeedForwardWithExperts):  # Gemma 4: experts see h itself
            mlp_out = self.mlp(self.mlp_norm(h), h)
        else:
            mlp_out = self.mlp(self.mlp_norm(h))
        if self.mlp_scale is not None:
            mlp_out = self.mlp_scale(mlp_out)
        if self.residual_multiplier is not None:
            mlp_out = mlp_out * self.residual_multiplier
        h = h + mlp_out
        if self.per_layer_gate is not None:
            if per_layer_input is None:
                raise ValueError("this layer needs its per-layer input (per-layer embeddings)")
            h = self.per_layer_gate(h, per_layer_input)
        if self.layer_scalar is not None:
            h = h * self.layer_scalar
        return h


class TransformerDecoder(nn.Module):
    """Token embeddings -> layers -> final norm -> output projection.

    Args:
        tok_embeddings: ``nn.Embedding(vocab, d)``.
        layers: the transformer blocks.
        norm: final norm.
        output: ``nn.Module`` ``[d] -> [vocab]`` (or ``[num_classes]`` for a reward head);
            None ties the output to ``tok_embeddings``.
        rope: computes ``cos, sin`` once per forward for every layer.
        local_rope: when set, the sliding-window layers take their ``cos, sin`` from it
            instead (Gemma 3's local RoPE base).
        max_seq_len: longest sequence the model was trained for (default cache length).
        embed_scale: multiply embeddings by this (Gemma: ``sqrt(d)``, rounded to the dtype).
        final_logit_softcap: ``cap * tanh(logits / cap)`` on the logits (Gemma 2).
        embed_multiplier: multiply embeddings by this Python float (Granite; unrounded).
        logits_divisor: divide the logits by this (Granite's ``logits_scaling``).
        per_layer_embeddings: Gemma 4's per-layer embeddings
            (``modules.per_layer_embeddings.PerLayerEmbeddings``): layer ``i`` gets slice
            ``i`` as its ``per_layer_input`` (needs ``tokens``).
        query_log_scaling: ``(beta, length)``: every layer's queries at position ``p`` (the
            RoPE position id) are multiplied by ``1 + beta * ln(1 + floor(p / length))``
            after RoPE (Ministral 3's ``llama_4_scaling_beta`` over the original length).

    Layers whose attention has ``kv_sharing`` share one dict of keys / values per forward
    (Gemma 4: the last layers reuse those of the last earlier layer of their type).

    ``forward(tokens [b, s], mask=None, input_pos=None) -> logits [b, s, vocab]``; see
    ``forward`` for the mask, cache and chunking rules.
    """

    def __init__(
        self,
        *,
        tok_embeddings: nn.Embedding,
        layers: list[TransformerSelfAttentionLayer] | nn.ModuleList,
        norm: nn.Module,
        output: nn.Module | None,
        rope: RotaryEmbedding,
        max_seq_len: int,
        local_rope: RotaryEmbedding | None = None,
        embed_scale: float | None = None,
        final_logit_softcap: float | None = None,
        embed_multiplier: float | None = None,
        logits_divisor: float | None = None,
        per_layer_embeddings: nn.Module | None = None,
        query_log_scaling: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.query_log_scaling = query_log_scaling
        self.tok_embeddings = tok_embeddings
        self.per_layer_embeddings = per_layer_embeddings
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.norm = norm
        self.output: nn.Module | TiedLinear = (
            TiedLinear(tok_embeddings) if output is None else output
        )
        self.rope = rope
        self.local_rope = local_rope
        self.max_seq_len = max_seq_len
        self.embed_scale = embed_scale
        self.final_logit_softcap = final_logit_softcap
        self.embed_multiplier = embed_multiplier
        self.logits_divisor = logits_divisor
        self.skip_output_layer = False
        self.num_output_chunks = 0
        self._cache_pos = 0
        self._cache_len: int | None = None
        windows = {layer.attn.sliding_window for layer in self.layers} - {None}
        if len(windows) > 1:
            raise ValueError(f"All sliding-window layers must share one window, got {windows}.")
        self._sliding_window: int | None = windows.pop() if windows else None
        chunks = {getattr(layer.attn, "chunk_size", None) for layer in self.layers} - {None}
        if len(chunks) > 1:
            raise ValueError(f"All chunked-attention layers must share one chunk, got {chunks}.")
        self._chunk: int | None = chunks.pop() if chunks else None
        self._kv_sharing = any(getattr(la.attn, "kv_sharing", None) for la in self.layers)
        if self._chunk is not None and self._sliding_window is not None:
            raise ValueError("A decoder cannot mix sliding-window and chunked-attention layers.")

    @property
    def tie_word_embeddings(self) -> bool:
        """True when ``output`` reuses the embedding matrix."""
        return isinstance(self.output, TiedLinear)

    def _embed_scale_for(self, dtype: torch.dtype) -> float:
        """``embed_scale`` rounded to ``dtype`` (Gemma's normalizer), as a Python float: the
        multiply equals one by a ``dtype`` tensor, with no host-to-device copy per forward."""
        assert self.embed_scale is not None
        cache = self.__dict__.setdefault("_embed_scales", {})
        if dtype not in cache:
            cache[dtype] = float(torch.tensor(self.embed_scale, dtype=dtype))
        return cache[dtype]

    # ------------------------------------------------------------------ output
    def set_num_output_chunks(self, num_output_chunks: int) -> None:
        """With ``n > 0``, forward returns a list of ``n`` logit chunks along the sequence."""
        self.num_output_chunks = num_output_chunks

    def unembed(self, h: Tensor) -> Tensor:
        """Logits of hidden states ``h [..., s, d]`` (final norm, output projection, scaling
        and soft-cap as in ``forward``) -> ``[..., s, vocab]``; torchtune's name, used by
        early-exit losses on intermediate layers' states."""
        return self._project(self.norm(h))

    def _project(self, h: Tensor) -> Tensor:
        logits = self.output(h)
        if self.logits_divisor is not None:
            logits = logits / self.logits_divisor
        if self.final_logit_softcap is not None:
            cap = self.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ------------------------------------------------------------------ caches
    def setup_caches(
        self,
        batch_size: int,
        dtype: torch.dtype,
        max_seq_len: int | None = None,
        *,
        encoder_max_seq_len: int | None = None,
        decoder_max_seq_len: int | None = None,
    ) -> None:
        """Allocate a KV cache of ``max_seq_len`` (default: the model's) in every layer.

        ``decoder_max_seq_len`` is torchtune's name for ``max_seq_len``;
        ``encoder_max_seq_len`` is accepted for torchtune's signature; it must be None unless
        the decoder has fusion layers (which then keep the prompt's encoder states).
        """
        fused = [layer for layer in self.layers if hasattr(layer, "fusion_layer")]
        if encoder_max_seq_len is not None and not fused:
            raise ValueError("This decoder has no encoder; encoder_max_seq_len must be None.")
        length = max_seq_len or decoder_max_seq_len or self.max_seq_len
        for layer in self.layers:
            layer.attn.setup_cache(batch_size, dtype, length)
        for layer in fused:  # keep the prompt's encoder states while decoding
            layer.cache_encoder = True
            layer.reset_encoder_cache()
        self._cache_len = length
        self._cache_pos = 0

    def caches_are_setup(self) -> bool:
        return self._cache_len is not None

    def caches_are_enabled(self) -> bool:
        """Caches are set up and not switched off (``modules.disable_kv_cache``)."""
        return self._caching

    @property
    def _caching(self) -> bool:
        return self._cache_len is not None and all(
            getattr(layer.attn, "cache_enabled", True) for layer in self.layers
        )

    def reset_caches(self) -> None:
        """Empty every layer's cache; the next forward starts at cache position 0."""
        if self._cache_len is None:
            raise RuntimeError(
                "Key value caches are not setup: call setup_caches() before reset_caches()"
            )
        for layer in self.layers:
            if layer.attn.kv_cache is not None:  # none in layers reusing shared keys / values
                layer.attn.kv_cache.reset()
            if hasattr(layer, "fusion_layer"):
                layer.reset_encoder_cache()
        self._cache_pos = 0

    def remove_caches(self) -> None:
        """Drop the caches (back to training mode)."""
        for layer in self.layers:
            layer.attn.kv_cache = None
            layer.attn.cache_enabled = False
            if hasattr(layer, "fusion_layer"):
                layer.cache_encoder = False
                layer.reset_encoder_cache()
        self._cache_len = None
        self._cache_pos = 0

    @property
    def decoder_max_cache_seq_len(self) -> int | None:
        return self._cache_len

    # ----------------------------------------------------------------- forward
    def _masks(
        self, b: int, s: int, mask: Tensor | None, device: torch.device
    ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """Return (mask for full layers, mask for sliding / chunked layers, default positions).

        A window at least as long as the keys changes nothing, so the sliding layers then
        share the full mask (and keep SDPA's fast ``is_causal`` path when it is None).
        """
        if self._caching:
            start, end = self._cache_pos, self._cache_pos + s
            if end > self._cache_len:
                raise KVCacheOverflowError(
                    f"KV cache overflow: position {end} > cache length {self._cache_len}; "
                    "call reset_caches() or setup_caches with a larger max_seq_len."
                )
            q_idx = torch.arange(start, end, device=device)
            k_idx = torch.arange(end, device=device)
            if mask is None:
                mask = (k_idx[None, :] <= q_idx[:, None])[None]
            else:
                mask = mask[:, :, :end]
        else:
            q_idx = k_idx = torch.arange(s, device=device)
        sliding = mask
        if self._sliding_window is not None and self._sliding_window < k_idx.numel():
            band = sliding_window_band(q_idx, k_idx, self._sliding_window)[None]
            sliding = band if mask is None else mask & band
        return mask, sliding, q_idx

    def _chunked_mask(self, mask: Tensor | None, pos: Tensor, s: int) -> Tensor | None:
        """The mask of Llama 4's chunked layers: ``mask`` (None = causal) and "same chunk of
        ``_chunk`` positions" (positions, not slots: left padding and packed documents start
        their chunks at their first token, as transformers does). ``pos [b|1, s]``."""
        assert self._chunk is not None
        pos = pos if pos.dim() == 2 else pos[None]
        if self._caching:  # remember the positions of the cached slots
            start = self._cache_pos
            if start == 0 or getattr(self, "_slot_pos", None) is None:
                self._slot_pos = torch.zeros(
                    pos.shape[0], self._cache_len, dtype=pos.dtype, device=pos.device
                )
            self._slot_pos[:, start : start + s] = pos
            k_pos = self._slot_pos[:, : start + s]
        else:
            k_pos = pos
        same = pos[:, :, None] // self._chunk == k_pos[:, None, :] // self._chunk
        if mask is None:
            n = k_pos.shape[-1]
            causal = torch.ones(s, n, dtype=torch.bool, device=pos.device).tril(n - s)
            return same & causal[None]
        return mask & same

    def _documents(
        self,
        b: int,
        s: int,
        mask: Tensor | None,
        seq_lens: Sequence[int] | Documents,
        input_pos: Tensor | None,
        device: torch.device,
    ) -> tuple[Documents, Tensor]:
        """Check ``seq_lens``; return (documents for every layer, input_pos).

        Each layer picks its kernel for the documents itself (soft-cap, its sliding window:
        ``attention_kernels.document_strategy``); masks they need are built once and shared.
        """
        docs = seq_lens if isinstance(seq_lens, Documents) else Documents(seq_lens, device)
        lens = docs.seq_lens
        if b != 1 or docs.total != s or min(lens, default=0) < 1:
            raise ValueError(
                f"seq_lens {list(lens[:8])}... must be positive and sum to the sequence length "
                f"{s} of a batch of one row (got batch size {b})"
            )
        if mask is not None or self._caching:
            raise ValueError("seq_lens cannot be combined with a mask or with KV caches")
        if input_pos is None:
            input_pos = torch.cat([torch.arange(n, device=device) for n in lens])[None]
        return docs, input_pos

    def _per_layer_inputs(self, tokens: Tensor | None, h: Tensor) -> Tensor | None:
        """``[b, s, L, p]`` per-layer embeddings of ``tokens`` (None without them)."""
        if self.per_layer_embeddings is None:
            return None
        if tokens is None:
            raise ValueError(
                "this model has per-layer embeddings (Gemma 4), which are looked up by token "
                "id: pass tokens along with input_embeds"
            )
        return self.per_layer_embeddings(tokens, h)

    def _query_scale(self, pos: Tensor) -> Tensor:
        """``[b, s]`` (``[1, s]`` for ``[s]`` positions) fp32 query scale of positions ``pos``
        (see ``query_log_scaling``), computed as transformers' Ministral 3 does."""
        assert self.query_log_scaling is not None
        beta, length = self.query_log_scaling
        pos = pos if pos.dim() == 2 else pos[None]
        return 1 + beta * torch.log(1 + torch.floor(pos / length))

    def forward(
        self,
        tokens: Tensor | None,
        *,
        mask: Tensor | None = None,
        input_pos: Tensor | None = None,
        input_embeds: Tensor | None = None,
        seq_lens: Sequence[int] | Documents | None = None,
        encoder_input: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        encoder_fallback_mask: Tensor | None = None,
        layer_residuals: Sequence[Tensor] | None = None,
    ) -> Tensor | list[Tensor]:
        """Run the decoder.

        Args:
            tokens: ``[b, s]`` token ids (ignored when ``input_embeds`` is given).
            mask: ``[b, s, s]`` bool, True = query i may attend key j; None = plain causal.
                With KV caches enabled: ``[b, s, cache_len]`` over cache slots (torchtune's
                convention), or None for causal over everything cached so far.
            input_pos: ``[b, s]`` position ids (restart per packed document; default
                ``arange``, offset by the cache position when decoding); ``[s]`` is shared by
                every row, and a one-token step also takes torchtune's ``[b]``.
            input_embeds: ``[b, s, d]`` embeddings used instead of ``tok_embeddings(tokens)``.
            seq_lens: lengths of the documents concatenated in a ``[1, s]`` batch (training on
                unpadded data; a list of ints or a ``Documents``): attention is causal within
                each document (per-document SDPA on CPU, one varlen / flex call on CUDA, see
                ``attention_kernels``); ``input_pos`` defaults to positions restarting at each
                document. Not with ``mask`` or KV caches.
            encoder_input: ``[b, s_enc, d]`` encoder states (e.g. projected image tokens) for
                the layers that fuse them (``modules.fusion.FusionLayer``); None skips fusion.
            encoder_mask: ``[b, s, s_enc]`` bool, True = token i may attend encoder state j.
            encoder_fallback_mask: ``[b, s, s_enc]`` bool, what a token with an all-False
                ``encoder_mask`` row attends (packed documents; see
                ``modules.fusion.TransformerCrossAttentionLayer``); None = every state.
            layer_residuals: ``[b, s, d]`` tensors; the i-th is added to the hidden states
                after layer i (Qwen3-VL's DeepStack: intermediate image features, zero away
                from the image tokens).

        Returns:
            ``[b, s, vocab]`` logits; ``[b, s, d]`` hidden states after the final norm when
            ``skip_output_layer``; a list of ``num_output_chunks`` logit chunks along ``s``
            when chunking is set.
        """
        h = self.tok_embeddings(tokens) if input_embeds is None else input_embeds
        if self.embed_scale is not None:
            h = h * self._embed_scale_for(h.dtype)
        if self.embed_multiplier is not None:
            h = h * self.embed_multiplier
        b, s = h.shape[:2]
        if input_pos is not None and input_pos.dim() == 1 and s == 1 < b == input_pos.numel():
            input_pos = input_pos[:, None]  # torchtune's decoding step: one position per row
        if seq_lens is not None:
            seq_lens, input_pos = self._documents(b, s, mask, seq_lens, input_pos, h.device)
        full_mask, sliding_mask, default_pos = self._masks(b, s, mask, h.device)
        plain = input_pos is None and not self._caching and s <= (self._chunk or 0)
        if self._chunk is not None and seq_lens is None and not plain:  # plain: one chunk
            pos = default_pos if input_pos is None else input_pos
            sliding_mask = self._chunked_mask(full_mask, pos, s)
        pos = default_pos if input_pos is None else input_pos
        per_layer = self._per_layer_inputs(tokens, h)
        shared: dict[str, tuple[Tensor, Tensor]] | None = {} if self._kv_sharing else None
        cos_g, sin_g = self.rope(pos, h.dtype)
        qs = {} if self.query_log_scaling is None else {"q_scale": self._query_scale(pos)}
        local_cs = (cos_g, sin_g) if self.local_rope is None else self.local_rope(pos, h.dtype)
        for i, layer in enumerate(self.layers):
            local = layer.attn.sliding_window is not None or getattr(layer.attn, "chunk_size", None)
            layer_mask = sliding_mask if local else full_mask
            cos, sin = local_cs if local and self.local_rope is not None else (cos_g, sin_g)
            fuse = encoder_input is not None or encoder_mask is not None
            if fuse and hasattr(layer, "fusion_layer"):
                fallback = {}
                if encoder_fallback_mask is not None:
                    fallback = {"encoder_fallback_mask": encoder_fallback_mask}
                h = layer(
                    h,
                    cos,
                    sin,
                    layer_mask,
                    seq_lens=seq_lens,
                    encoder_input=encoder_input,
                    encoder_mask=encoder_mask,
                    **fallback,
                )
            elif per_layer is None and shared is None:
                if seq_lens is None:
                    h = layer(h, cos, sin, layer_mask, **qs)
                else:
                    h = layer(h, cos, sin, None, seq_lens=seq_lens, **qs)
            else:  # Gemma 4: per-layer inputs, shared keys / values
                extra = dict(qs) if per_layer is None else {"per_layer_input": per_layer[:, :, i]}
                if shared is not None:
                    extra["shared_kv"] = shared
                h = layer(h, cos, sin, None if seq_lens else layer_mask, seq_lens, **extra)
            if layer_residuals is not None and i < len(layer_residuals):
                h = h + layer_residuals[i].to(h.dtype)
        if self._caching:
            self._cache_pos += s
        h = self.norm(h)
        if self.skip_output_layer:
            return h
        if self.num_output_chunks > 0:
            return [self._project(c) for c in h.chunk(self.num_output_chunks, dim=1)]
        return self._project(h)
