"""Unpaired preference data for KTO: rows of a prompt, one completion and a desirable label.

``kto_dataset`` reads TRL's unpaired preference format (``{"prompt", "completion",
"label"}``, label a bool); ``split_preference_pairs`` turns a paired preference dataset into
unpaired rows (each pair -> its chosen side, desirable, and its rejected side, undesirable).
Items are ``{"input_ids", "labels", "label", "prompt_len"}``; ``padded_collate_kto`` batches
them together with KTO's mismatched (KL) sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tunesmith.data import CROSS_ENTROPY_IGNORE_IDX, DataRowError, Message
from tunesmith.datasets._preference import PreferenceDataset
from tunesmith.datasets._row_checks import checked_column_map, text_column

__all__ = [
    "UnpairedToMessages",
    "UnpairedPreferenceDataset",
    "kto_dataset",
    "PairsAsUnpaired",
    "split_preference_pairs",
    "padded_collate_kto",
]

UNPAIRED_KEYS = ("input_ids", "labels", "label", "prompt_len")


def _item(ids: list[int], labels: list[int], label: bool) -> dict[str, Any]:
    """An unpaired item; ``prompt_len`` = the position of the first trained label."""
    trained = [i for i, x in enumerate(labels) if x != CROSS_ENTROPY_IGNORE_IDX]
    prompt_len = trained[0] if trained else len(ids)
    return {"input_ids": ids, "labels": labels, "label": bool(label), "prompt_len": prompt_len}


class UnpairedToMessages:
    """Row ``{"prompt": str, "completion": str, "label": bool}`` (rename with ``column_map``)
    -> ``{"messages": [user prompt, assistant completion], "label": bool}``."""

    def __init__(self, train_on_input: bool = False, column_map: dict[str, str] | None = None):
        self.train_on_input = train_on_input
        self.column_map = checked_column_map(
            column_map, ("prompt", "completion", "label"), "UnpairedToMessages"
        )

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        column = self.column_map["label"]
        if column not in sample:
            raise DataRowError(
                f"missing column; the row has columns {sorted(sample)}. Set column_map",
                column=column,
            )
        label = sample[column]
        if not isinstance(label, bool | np.bool_) and label not in (0, 1):
            raise DataRowError(f"expected a bool (desirable or not), got {label!r}", column=column)
        messages = [
            Message(role="user", content=text_column(sample, self.column_map["prompt"]),
                    masked=not self.train_on_input),
            Message(role="assistant", content=text_column(sample, self.column_map["completion"])),
        ]  # fmt: skip
        return {"messages": messages, "label": bool(label)}


class UnpairedPreferenceDataset(PreferenceDataset):
    """Rows -> ``{"messages", "label"}`` (``message_transform``) -> unpaired items
    ``{"input_ids", "labels" (-100 where masked), "label" bool, "prompt_len" int}``.
    Loading, tokenizing, row errors and ``drop_untrained_rows`` (rows with no trained token
    left out) as ``PreferenceDataset``."""

    _unit = "rows"
    _detail = ""

    def _row(self, index: int) -> tuple[list[Message], dict[str, Any]]:
        try:
            transformed = self._message_transform(self._data[index])
            ids, labels = self._tokenize(transformed["messages"])
        except DataRowError as e:
            raise self._row_error(e, index) from None
        return transformed["messages"], _item(ids, labels, transformed["label"])

    def _sides(self, index: int) -> list[tuple[list[Message], list[int], list[int]]]:
        messages, item = self._row(index)
        return [(messages, item["input_ids"], item["labels"])]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._keep is not None:
            index = int(self._keep[index])
        return self._row(index)[1]


def kto_dataset(
    tokenizer: Any,
    *,
    source: str,
    column_map: dict[str, str] | None = None,
    train_on_input: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> UnpairedPreferenceDataset:
    """TRL's unpaired preference format: rows ``{"prompt", "completion", "label"}`` (strings
    and a bool; rename with ``column_map``), ``label`` True for a desirable completion."""
    return UnpairedPreferenceDataset(
        source=source,
        message_transform=UnpairedToMessages(train_on_input, column_map),
        tokenizer=tokenizer,
        filter_fn=filter_fn,
        split=split,
        **load_dataset_kwargs,
    )


class PairsAsUnpaired(Dataset):
    """A paired preference dataset as unpaired rows: item ``2i`` is pair ``i``'s chosen side
    (desirable), ``2i + 1`` its rejected side (undesirable). Forwards ``max_token_id`` and
    ``num_skipped_rows`` of the wrapped dataset (its ``drop_untrained_rows`` runs first)."""

    def __init__(self, pairs: Dataset) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return 2 * len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index // 2]
        side = "chosen" if index % 2 == 0 else "rejected"
        ids, labels = list(pair[f"{side}_input_ids"]), list(pair[f"{side}_labels"])
        return _item(ids, labels, side == "chosen")

    def drop_untrained_rows(self) -> None:
        drop = getattr(self.pairs, "drop_untrained_rows", None)
        if callable(drop):
            drop()

    def max_token_id(self) -> int | None:
        fn = getattr(self.pairs, "max_token_id", None)
        return fn() if callable(fn) else None

    @property
    def num_skipped_rows(self) -> int | None:
        return getattr(self.pairs, "num_skipped_rows", None)


def split_preference_pairs(pairs: Dataset) -> PairsAsUnpaired:
    """Each preference pair -> one desirable (chosen) and one undesirable (rejected) row."""
    return PairsAsUnpaired(pairs)


def _pad(rows: Sequence[list[int]], value: int, length: int) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def padded_collate_kto(
    batch: Sequence[Mapping[str, Any]],
    padding_idx: int = 0,
    ignore_idx: int = CROSS_ENTROPY_IGNORE_IDX,
    with_kl: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpaired items -> ``(input_ids [r, s], labels [r, s], desirable [b] bool)``, right-padded.

    Rows ``:b`` are the items; with ``with_kl`` (``r = 2b``) rows ``b:`` are KTO's mismatched
    sequences, as TRL builds them: item ``i``'s prompt with item ``i - 1``'s completion (the
    completions rotated by one within the batch), used only for the KL reference point.
    """
    if not batch:
        raise ValueError("padded_collate_kto got an empty batch")
    ids = [list(x["input_ids"]) for x in batch]
    labels = [list(x["labels"]) for x in batch]
    if with_kl:
        n = len(batch)
        for i, item in enumerate(batch):
            other = batch[(i - 1) % n]
            p, q = int(item["prompt_len"]), int(other["prompt_len"])
            ids.append(list(item["input_ids"][:p]) + list(other["input_ids"][q:]))
            labels.append(list(item["labels"][:p]) + list(other["labels"][q:]))
    length = max(len(r) for r in ids)
    desirable = torch.tensor([bool(x["label"]) for x in batch])
    return _pad(ids, padding_idx, length), _pad(labels, ignore_idx, length), desirable
