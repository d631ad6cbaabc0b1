"""Collate functions: turn a list of samples into padded batch tensors.

Samples follow the data contract (docs/architecture.md): ``{"tokens": list[int],
"labels": list[int]}`` with labels aligned to tokens (-100 = not trained on);
packed samples also carry ``input_pos`` and ``document_ids`` / ``seq_lens``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from tunesmith.data._packing import CROSS_ENTROPY_IGNORE_IDX
from tunesmith.modules.masks import packed_causal_mask

__all__ = [
    "left_pad_sequence",
    "padded_collate",
    "padded_collate_sft",
    "padded_collate_packed",
    "padded_collate_dpo",
]


def _as_tensor(values: Any) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.long()
    return torch.as_tensor(values, dtype=torch.long)


def _round_up(length: int, multiple: int) -> int:
    if multiple < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {multiple}")
    return -(-length // multiple) * multiple


def _pad_right(sequences: Sequence[torch.Tensor], value: int, length: int) -> torch.Tensor:
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = seq
    return out


def left_pad_sequence(
    sequences: Sequence[torch.Tensor], batch_first: bool = True, padding_value: float = 0
) -> torch.Tensor:
    """Pad variable-length 1-D tensors on the left (for generation prompts).

    Returns ``[b, s]`` when ``batch_first`` else ``[s, b]``, ``s`` the longest length.
    """
    flipped = [torch.flip(seq, dims=[0]) for seq in sequences]
    padded = pad_sequence(flipped, batch_first=batch_first, padding_value=padding_value)
    return torch.flip(padded, dims=[int(batch_first)])


def padded_collate_sft(
    batch: Sequence[Mapping[str, Any]],
    padding_idx: int = 0,
    ignore_idx: int = CROSS_ENTROPY_IGNORE_IDX,
    pad_to_multiple_of: int = 1,
) -> dict[str, torch.Tensor]:
    """Right-pad ``tokens`` and ``labels`` to the longest sample (rounded up to a multiple).

    Returns ``{"tokens": [b, s], "labels": [b, s]}`` (int64); padded token positions hold
    ``padding_idx`` and padded label positions ``ignore_idx``. Unlike torchtune, a length
    that is already a multiple of ``pad_to_multiple_of`` gains no extra padding.
    """
    if not batch:
        raise ValueError("padded_collate_sft got an empty batch")
    tokens = [_as_tensor(sample["tokens"]) for sample in batch]
    labels = [_as_tensor(sample["labels"]) for sample in batch]
    longest = max(max(len(t) for t in tokens), max(len(x) for x in labels))
    length = _round_up(longest, pad_to_multiple_of)
    return {
        "tokens": _pad_right(tokens, padding_idx, length),
        "labels": _pad_right(labels, ignore_idx, length),
    }


def padded_collate(
    batch: Sequence[Mapping[str, Any]],
    *,
    pad_direction: str = "right",
    keys_to_pad: Sequence[str] = ("tokens", "labels"),
    padding_idx: int | Mapping[str, int] = 0,
) -> dict[str, Any]:
    """Pad the given keys of each sample (``[b, s]``) on the right or left; ``padding_idx`` is
    one value or one per padded key. Other keys are stacked into tensors (``[b, ...]``, a
    classifier's ``labels``) where they are numbers, else passed through as lists.

    Raises:
        ValueError: a bad ``pad_direction``, no ``keys_to_pad``, a key to pad the samples lack,
            or a ``padding_idx`` mapping whose keys are not ``keys_to_pad``.
    """
    if pad_direction not in ("left", "right"):
        raise ValueError(f"pad_direction must be 'left' or 'right', got {pad_direction!r}")
    if not keys_to_pad:
        raise ValueError("keys_to_pad is empty; name the keys to pad (e.g. ['tokens', 'labels'])")
    absent = sorted(set(keys_to_pad) - set(batch[0]))
    if absent:
        raise ValueError(f"keys_to_pad {absent} are not in the batch (keys {sorted(batch[0])})")
    if isinstance(padding_idx, Mapping) and set(padding_idx) != set(keys_to_pad):
        raise ValueError(
            f"padding_idx keys {sorted(padding_idx)} must be the keys_to_pad {sorted(keys_to_pad)}"
        )
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if key not in keys_to_pad:
            out[key] = _stacked(values)
            continue
        pad = padding_idx[key] if isinstance(padding_idx, Mapping) else padding_idx
        seqs = [_as_tensor(v) for v in values]
        if pad_direction == "right":
            out[key] = pad_sequence(seqs, batch_first=True, padding_value=pad)
        else:
            out[key] = left_pad_sequence(seqs, batch_first=True, padding_value=pad)
    return out


def _stacked(values: list[Any]) -> Any:
    """``values`` as one tensor when they are numbers or equal-shape tensors, else the list."""
    if all(isinstance(v, torch.Tensor) for v in values):
        try:
            return torch.stack(values)
        except RuntimeError:
            return values
    try:
        return torch.tensor(values)
    except (TypeError, ValueError, RuntimeError):
        return values


def _document_ids_from_seq_lens(seq_lens: torch.Tensor, length: int) -> torch.Tensor:
    seq_lens = _as_tensor(seq_lens)
    if int(seq_lens.sum()) != length:
        raise ValueError(f"seq_lens sum to {int(seq_lens.sum())} but the pack has {length} tokens")
    return torch.repeat_interleave(torch.arange(len(seq_lens)), seq_lens)


def padded_collate_packed(
    batch: Sequence[Mapping[str, Any]], mask: bool = True
) -> dict[str, torch.Tensor]:
    """Stack packed samples (all ``max_seq_len`` long) and build their attention mask.

    Each sample holds ``tokens``, ``labels``, ``input_pos`` (``[s]``) and ``document_ids``
    ``[s]`` or ``seq_lens`` (document lengths summing to ``s``, as torchtune's packs have).

    Returns:
        ``tokens``, ``labels``, ``input_pos``: ``[b, s]`` int64, and (``mask=True``) ``mask``:
        ``[b, s, s]`` bool block-causal (True = attend), so no token attends across
        documents. ``mask=False`` skips building it (``b * s * s`` bytes, copied to the device
        each step) for consumers that find the documents from ``input_pos`` restarts.
    """
    if not batch:
        raise ValueError("padded_collate_packed got an empty batch")
    tokens = torch.stack([_as_tensor(x["tokens"]) for x in batch])
    labels = torch.stack([_as_tensor(x["labels"]) for x in batch])
    input_pos = torch.stack([_as_tensor(x["input_pos"]) for x in batch])
    s = tokens.shape[1]
    if all("document_ids" in x for x in batch):
        document_ids = torch.stack([_as_tensor(x["document_ids"]) for x in batch])
    elif all("seq_lens" in x for x in batch):
        document_ids = torch.stack([_document_ids_from_seq_lens(x["seq_lens"], s) for x in batch])
    else:
        raise ValueError(
            "padded_collate_packed needs 'document_ids' or 'seq_lens' in every sample; use a "
            "PackedDataset (dataset.packed=True) with this collate, or padded_collate_sft "
            "for unpacked data"
        )
    out = {"tokens": tokens, "labels": labels, "input_pos": input_pos}
    if mask:
        out["mask"] = packed_causal_mask(document_ids)
    return out


def padded_collate_dpo(
    batch: Sequence[Mapping[str, Any]],
    padding_idx: int = 0,
    ignore_idx: int = CROSS_ENTROPY_IGNORE_IDX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate preference pairs: chosen rows first, then rejected rows.

    Each sample holds ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids`` and
    ``rejected_labels``. Returns ``(input_ids [2b, s], labels [2b, s])`` right-padded with
    ``padding_idx`` / ``ignore_idx``; rows ``:b`` are chosen and ``b:`` rejected.
    """
    if not batch:
        raise ValueError("padded_collate_dpo got an empty batch")
    input_ids = [_as_tensor(x["chosen_input_ids"]) for x in batch] + [
        _as_tensor(x["rejected_input_ids"]) for x in batch
    ]
    labels = [_as_tensor(x["chosen_labels"]) for x in batch] + [
        _as_tensor(x["rejected_labels"]) for x in batch
    ]
    length = max(max(len(t) for t in input_ids), max(len(x) for x in labels))
    return _pad_right(input_ids, padding_idx, length), _pad_right(labels, ignore_idx, length)
