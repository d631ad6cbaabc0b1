"""Static key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["KVCache", "KVCacheBatchError", "KVCacheOverflowError"]


class KVCacheOverflowError(RuntimeError, AssertionError):
    """More positions than the cache holds. Also an ``AssertionError``: torchtune's cache
    asserts here, so code catching that keeps working (raised explicitly, never skipped by
    ``python -O``)."""


class KVCacheBatchError(RuntimeError, ValueError):
    """A batch larger than the cache was set up for (also torchtune's ``ValueError``)."""


class KVCache(nn.Module):
    """Preallocated ``[b, num_kv_heads, max_seq_len, head_dim]`` key and value buffers.

    ``update`` writes the new keys/values at the next free slots and returns everything
    written so far. Buffers are non-persistent: they never appear in a state dict.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | None = None,
    ):
        super().__init__()
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), False)
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.size = 0

    def reset(self) -> None:
        """Empty the cache (zero the buffers, rewind to position 0)."""
        self.k_cache.zero_()
        self.v_cache.zero_()
        self.size = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k, v`` ``[b, num_kv_heads, s, head_dim]``; return ``[b, kv, size, head_dim]``."""
        b, _, s, _ = k.shape
        end = self.size + s
        if end > self.max_seq_len:
            raise KVCacheOverflowError(
                f"KV cache overflow: {end} positions > max_seq_len {self.max_seq_len}; "
                "call setup_caches with a larger max_seq_len or reset_caches()."
            )
        if b > self.batch_size:
            raise KVCacheBatchError(
                f"Batch {b} is larger than the cache's batch size {self.batch_size}."
            )
        self.k_cache[:b, :, self.size : end] = k
        self.v_cache[:b, :, self.size : end] = v
        self.size = end
        return self.k_cache[:b, :, :end], self.v_cache[:b, :, :end]
