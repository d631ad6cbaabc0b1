"""Vectorised packing of tokenized samples into fixed-length sequences.

Samples are held as one concatenated token stream (``TokenizedSamples``: flat
``tokens``/``labels`` plus per-sample ``offsets``), never as lists of lists, so
packing is a handful of numpy operations over the whole stream instead of a
Python loop per token. A pack is ``max_seq_len`` tokens holding whole samples
("documents") in their original order (next-fit, as torchtune packs), padded at
the tail with ``padding_idx`` / ``-100`` labels. Each pack carries
per-document position ids (``input_pos`` restarts at 0 at each document) and
``document_ids`` so a block-causal mask stops attention across documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

__all__ = [
    "CROSS_ENTROPY_IGNORE_IDX",
    "TokenizedSamples",
    "PackedSequences",
    "pack_sequences",
]

CROSS_ENTROPY_IGNORE_IDX = -100


@dataclass(frozen=True)
class TokenizedSamples:
    """Many tokenized samples as one stream.

    Attributes:
        tokens: ``[total]`` int32, every sample's tokens back to back.
        labels: ``[total]`` int32, aligned with ``tokens`` (-100 = not trained on).
        offsets: ``[n + 1]`` int64; sample ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.
    """

    tokens: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.tokens.shape != self.labels.shape:
            raise ValueError(
                f"tokens and labels must have the same length, got {self.tokens.shape} "
                f"and {self.labels.shape}"
            )
        if self.offsets.ndim != 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.tokens):
            raise ValueError("offsets must start at 0 and end at len(tokens)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """``[n]`` int64: the number of tokens of each sample."""
        return np.diff(self.offsets)

    def sample(self, index: int) -> dict[str, list[int]]:
        """Sample ``index`` as ``{"tokens": list[int], "labels": list[int]}``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return {
            "tokens": self.tokens[start:end].tolist(),
            "labels": self.labels[start:end].tolist(),
        }

    @classmethod
    def from_lists(
        cls, tokens: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]
    ) -> TokenizedSamples:
        """Concatenate per-sample token and label lists (one ``np.fromiter`` per stream)."""
        if len(tokens) != len(labels):
            raise ValueError(f"{len(tokens)} token lists but {len(labels)} label lists")
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        label_lengths = np.fromiter((len(x) for x in labels), dtype=np.int64, count=len(labels))
        bad = np.flatnonzero(lengths != label_lengths)
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"sample {i}: {lengths[i]} tokens but {label_lengths[i]} labels; labels must be "
                "aligned with tokens"
            )
        offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        flat_tokens = np.fromiter(chain.from_iterable(tokens), dtype=np.int32, count=total)
        flat_labels = np.fromiter(chain.from_iterable(labels), dtype=np.int32, count=total)
        return cls(flat_tokens, flat_labels, offsets)

    @classmethod
    def from_samples(cls, samples: Iterable[Mapping[str, Any]]) -> TokenizedSamples:
        """Collect ``{"tokens", "labels"}`` dicts (e.g. iterating a dataset)."""
        tokens: list[Sequence[int]] = []
        labels: list[Sequence[int]] = []
        for sample in samples:
            tokens.append(sample["tokens"])
            labels.append(sample["labels"])
        return cls.from_lists(tokens, labels)

    @classmethod
    def concatenate(cls, parts: Sequence[TokenizedSamples]) -> TokenizedSamples:
        """Join several streams in order (e.g. the chunks tokenized by worker processes)."""
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(1, np.int64))
        shifts = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
        offsets = np.concatenate(
            [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]
        )
        return cls(
            np.concatenate([p.tokens for p in parts]),
            np.concatenate([p.labels for p in parts]),
            offsets.astype(np.int64),
        )

    def select(self, indices: Sequence[int] | np.ndarray) -> TokenizedSamples:
        """The samples at ``indices`` (``[k]``, in that order) as a new stream."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        shift = np.repeat(self.offsets[idx] - offsets[:-1], lengths)
        positions = shift + np.arange(int(offsets[-1]), dtype=np.int64)
        return TokenizedSamples(self.tokens[positions], self.labels[positions], offsets)

    def trained_targets(self) -> np.ndarray:
        """``[n]`` int64: how many next-token targets of each sample are trained on.

        The recipe shifts labels left by one, so sample ``i`` trains on
        ``labels[offsets[i] + 1 : offsets[i + 1]]`` that are not -100; 0 means the sample
        contributes nothing to the loss.
        """
        trained = np.zeros(len(self.labels) + 1, dtype=np.int64)
        np.cumsum(self.labels != CROSS_ENTROPY_IGNORE_IDX, out=trained[1:])
        starts, ends = self.offsets[:-1], self.offsets[1:]
        return trained[ends] - trained[np.minimum(starts + 1, ends)]


@dataclass(frozen=True)
class PackedSequences:
    """Packs as flat arrays over the packed documents (no padding stored).

    Attributes:
        tokens, labels: ``[total]`` int32, the packed documents back to back.
        input_pos: ``[total]`` int32, position of each token within its document.
        document_ids: ``[total]`` int32, index of each token's document within its pack.
        doc_lens: ``[n_docs]`` int64, the length of each document (fragment) in order.
        pack_doc_offsets: ``[n_packs + 1]`` int64; pack ``k`` holds documents
            ``doc_lens[pack_doc_offsets[k]:pack_doc_offsets[k + 1]]``.
        pack_token_offsets: ``[n_packs + 1]`` int64; pack ``k`` holds
            ``tokens[pack_token_offsets[k]:pack_token_offsets[k + 1]]``.
        max_seq_len: the length every pack is padded to.
        padding_idx: the token id used for padding.
    """

    tokens: np.ndarray
    labels: np.ndarray
    input_pos: np.ndarray
    document_ids: np.ndarray
    doc_lens: np.ndarray
    pack_doc_offsets: np.ndarray
    pack_token_offsets: np.ndarray
    max_seq_len: int
    padding_idx: int = 0

    def __len__(self) -> int:
        return len(self.pack_doc_offsets) - 1

    def pack(self, index: int) -> dict[str, np.ndarray]:
        """Pack ``index`` as numpy int64 arrays.

        Returns ``tokens``, ``labels``, ``input_pos``, ``document_ids`` (all ``[max_seq_len]``)
        and ``seq_lens`` ``[n_docs_in_pack (+1 for the padding block)]``. Padding forms its
        own document; its positions continue after the last document (clamped to
        ``max_seq_len - 1``) like torchtune's, and its labels are -100.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"pack index {index} out of range for {len(self)} packs")
        start, end = int(self.pack_token_offsets[index]), int(self.pack_token_offsets[index + 1])
        first, last = int(self.pack_doc_offsets[index]), int(self.pack_doc_offsets[index + 1])
        used, size = end - start, self.max_seq_len
        tokens = np.full(size, self.padding_idx, dtype=np.int64)
        labels = np.full(size, CROSS_ENTROPY_IGNORE_IDX, dtype=np.int64)
        input_pos = np.empty(size, dtype=np.int64)
        document_ids = np.empty(size, dtype=np.int64)
        tokens[:used] = self.tokens[start:end]
        labels[:used] = self.labels[start:end]
        input_pos[:used] = self.input_pos[start:end]
        document_ids[:used] = self.document_ids[start:end]
        seq_lens = self.doc_lens[first:last]
        if used < size:
            after = int(input_pos[used - 1]) + 1 if used else 0
            input_pos[used:] = np.minimum(np.arange(after, after + size - used), size - 1)
            document_ids[used:] = last - first
            seq_lens = np.append(seq_lens, size - used)
        return {
            "tokens": tokens,
            "labels": labels,
            "input_pos": input_pos,
            "document_ids": document_ids,
            "seq_lens": seq_lens.astype(np.int64),
        }

    def pack_tensors(self, index: int) -> dict[str, Any]:
        """:meth:`pack` as torch tensors (int64), the form ``padded_collate_packed`` takes."""
        return {k: torch.from_numpy(v) for k, v in self.pack(index).items()}


def _next_fit_pack_ends(lengths: np.ndarray, max_seq_len: int) -> np.ndarray:
    """Indices (exclusive) where each pack of whole samples ends, filling packs in order."""
    ends: list[int] = []
    used = 0
    # One step per sample (not per token); the fill of a pack depends on the previous one.
    for i, n in enumerate(lengths.tolist()):
        if used + n > max_seq_len:
            ends.append(i)
            used = 0
        used += n
    ends.append(len(lengths))
    return np.asarray(ends, dtype=np.int64)


def pack_sequences(
    samples: TokenizedSamples,
    max_seq_len: int,
    *,
    split_across_pack: bool = False,
    padding_idx: int = 0,
    max_packs: int | None = None,
) -> PackedSequences:
    """Pack ``samples`` into sequences of ``max_seq_len`` tokens.

    Without ``split_across_pack`` whole samples are placed in order into the current pack
    until the next one does not fit (a sample longer than ``max_seq_len`` is an error).
    With ``split_across_pack`` the stream is cut every ``max_seq_len`` tokens and a sample
    crossing a cut continues, as a new document with positions from 0, in the next pack
    (the right choice for text completion). Empty samples are dropped.

    Args:
        samples: the tokenized samples.
        max_seq_len: tokens per pack.
        split_across_pack: cut samples at pack boundaries instead of moving them whole.
        padding_idx: token id for tail padding.
        max_packs: stop after this many packs (None = all).
    """
    if max_seq_len <= 0:
        raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
    all_lengths = samples.lengths
    keep = all_lengths > 0
    # Empty samples hold no tokens, so dropping them leaves the token stream unchanged.
    lengths = all_lengths[keep]
    tokens, labels = samples.tokens, samples.labels
    total = int(lengths.sum())

    if split_across_pack:
        ends = np.cumsum(lengths)
        cuts = np.arange(max_seq_len, total, max_seq_len, dtype=np.int64)
        bounds = np.union1d(ends, cuts)
        doc_lens = np.diff(np.concatenate([[0], bounds])).astype(np.int64)
        pack_starts = np.arange(0, total, max_seq_len, dtype=np.int64)
        doc_starts = bounds - doc_lens
        pack_doc_offsets = np.searchsorted(doc_starts, np.append(pack_starts, total))
    else:
        too_long = np.flatnonzero(lengths > max_seq_len)
        if len(too_long):
            i = int(np.flatnonzero(keep)[too_long[0]])
            raise ValueError(
                f"Dataset sample is too long: sample {i} has {int(all_lengths[i])} tokens, "
                "more than max_seq_len="
                f"{max_seq_len}. Set split_across_pack=True, raise max_seq_len, or set the "
                "tokenizer's max_seq_len so samples are truncated"
            )
        doc_lens = lengths.astype(np.int64)
        pack_doc_offsets = np.concatenate([[0], _next_fit_pack_ends(doc_lens, max_seq_len)])
        if total == 0:
            pack_doc_offsets = np.zeros(1, dtype=np.int64)

    if max_packs is not None and len(pack_doc_offsets) - 1 > max_packs:
        pack_doc_offsets = pack_doc_offsets[: max_packs + 1]
        n_docs = int(pack_doc_offsets[-1])
        doc_lens = doc_lens[:n_docs]
        kept = int(doc_lens.sum())
        tokens, labels = tokens[:kept], labels[:kept]
    doc_offsets = np.zeros(len(doc_lens) + 1, dtype=np.int64)
    np.cumsum(doc_lens, out=doc_offsets[1:])
    docs_per_pack = np.diff(pack_doc_offsets)
    doc_in_pack = np.arange(len(doc_lens)) - np.repeat(pack_doc_offsets[:-1], docs_per_pack)
    input_pos = np.arange(len(tokens), dtype=np.int64) - np.repeat(doc_offsets[:-1], doc_lens)
    return PackedSequences(
        tokens=np.ascontiguousarray(tokens, dtype=np.int32),
        labels=np.ascontiguousarray(labels, dtype=np.int32),
        input_pos=input_pos.astype(np.int32),
        document_ids=np.repeat(doc_in_pack, doc_lens).astype(np.int32),
        doc_lens=doc_lens,
        pack_doc_offsets=pack_doc_offsets.astype(np.int64),
        pack_token_offsets=doc_offsets[pack_doc_offsets],
        max_seq_len=max_seq_len,
        padding_idx=padding_idx,
    )
