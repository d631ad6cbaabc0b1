"""PackedDataset: a tokenized dataset packed into fixed-length sequences."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tunesmith.data import TokenizedSamples, pack_sequences
from tunesmith.datasets._checks import drop_untrained, why_untrained

__all__ = ["PackedDataset"]

logger = logging.getLogger(__name__)


class PackedDataset(Dataset):
    """Pack the samples of ``ds`` into sequences of exactly ``max_seq_len`` tokens.

    Samples keep their order and are placed whole into the current pack until the next
    one does not fit (torchtune's packing); the tail of each pack is padded. Packing is
    vectorised over the whole token stream. When ``ds`` offers ``tokenize_all`` (tunesmith
    datasets do) all rows are tokenized in bulk and cached on disk, so a second run skips
    tokenization; other datasets are iterated once. Samples with no trained token are left
    out before packing (one warning; an error when no sample has one).

    Args:
        ds: a dataset of ``{"tokens", "labels"}`` samples.
        max_seq_len: tokens per pack.
        padding_idx: token id for padding (labels of padding are -100).
        max_packs: keep at most this many packs.
        split_across_pack: cut samples at pack boundaries instead of moving them whole
            (use for text completion; otherwise a sample longer than ``max_seq_len`` is an
            error).
        num_workers, use_cache, cache_dir: passed to ``ds.tokenize_all``.

    Each item: ``tokens``, ``labels``, ``input_pos`` (restarting at 0 per document),
    ``document_ids`` (all ``[max_seq_len]`` int64) and ``seq_lens`` ``[n_docs (+1 padding)]``.
    Batch them with ``padded_collate_packed``, which builds the block-causal mask.
    ``sample_indices`` ``[n_docs]``: the ``ds`` index of each packed document, in pack order
    (without ``split_across_pack``).
    """

    packed = True

    def __init__(
        self,
        ds: Any,
        *,
        max_seq_len: int,
        padding_idx: int = 0,
        max_packs: int | None = None,
        split_across_pack: bool = False,
        num_workers: int | None = None,
        use_cache: bool = True,
        cache_dir: str | Path | None = None,
    ):
        self.ds = ds
        self.max_seq_len = max_seq_len
        self.padding_idx = padding_idx
        self.max_packs = max_packs
        self.split_across_pack = split_across_pack
        if hasattr(ds, "drop_untrained_rows"):  # tunesmith datasets: bulk, cached
            ds.drop_untrained_rows(
                num_workers=num_workers, use_cache=use_cache, cache_dir=cache_dir
            )
            samples = ds.samples()
            kept = np.arange(len(samples), dtype=np.int64)
        else:
            samples = TokenizedSamples.from_samples(ds[i] for i in range(len(ds)))
            keep = drop_untrained(
                type(ds).__name__,
                samples.trained_targets(),
                lambda i: why_untrained(int(samples.lengths[i]), None, lambda: False),
                max_seq_len=None,
                unit="samples",
            )
            kept = np.arange(len(samples), dtype=np.int64)
            if keep is not None:
                samples = samples.select(keep)
                kept = kept[np.asarray(keep, dtype=np.int64)]
        # ``ds`` index of every packed document in order (``pack_sequences`` drops empty ones)
        self.sample_indices = kept[samples.lengths > 0]
        self.packs = pack_sequences(
            samples,
            max_seq_len,
            split_across_pack=split_across_pack,
            padding_idx=padding_idx,
            max_packs=max_packs,
        )
        used = len(self.packs.tokens)
        capacity = max(1, len(self.packs) * max_seq_len)
        logger.info(
            "packed %d samples into %d packs of %d tokens (%.1f%% filled)",
            len(samples),
            len(self.packs),
            max_seq_len,
            100.0 * used / capacity,
        )

    def __len__(self) -> int:
        return len(self.packs)

    def max_token_id(self) -> int | None:
        """The largest token id of the packs, padding included."""
        tokens = self.packs.tokens
        found = int(tokens.max()) if len(tokens) else -1
        return max(found, self.padding_idx)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += len(self)
        return self.packs.pack_tensors(index)

    def token_counts(self) -> tuple[int, int]:
        """``(tokens, trained tokens)`` in all packs (padding not counted)."""
        from tunesmith.data import CROSS_ENTROPY_IGNORE_IDX

        labels = self.packs.labels
        return len(labels), int((labels != CROSS_ENTROPY_IGNORE_IDX).sum())
