"""Preference (chosen / rejected) datasets for DPO and reward modelling."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tunesmith.data import CROSS_ENTROPY_IGNORE_IDX, ChosenRejectedToMessages, DataRowError, Message
from tunesmith.datasets._checks import drop_untrained, has_trained_content, why_untrained
from tunesmith.datasets._common import is_hub_source
from tunesmith.datasets._loading import describe, load_rows
from tunesmith.datasets._row_checks import (
    checked_column_map,
    column_setting,
    row_error,
    text_column,
    tokenize_conversation,
)

__all__ = [
    "PreferenceDataset",
    "preference_dataset",
    "StackExchangePairedToMessages",
    "stack_exchange_paired_dataset",
    "hh_rlhf_helpful_dataset",
]


class PreferenceDataset(Dataset):
    """Rows -> ``{"chosen": [Message], "rejected": [Message]}`` -> token ids and labels.

    Items: ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``,
    ``rejected_labels`` (lists of int; labels -100 where masked). Batch with
    ``padded_collate_dpo``. Packing is not supported. ``drop_untrained_rows()`` (the dpo
    recipe calls it before training) tokenizes every pair once and leaves out the pairs
    where either side has no trained token.
    """

    _unit = "pairs"  # what drop_untrained_rows counts, and where a row trains on nothing
    _detail = " in the chosen or the rejected response"

    def __init__(
        self,
        *,
        source: str,
        message_transform: Callable,
        tokenizer: Any,
        filter_fn: Callable | None = None,
        packed: bool = False,
        **load_dataset_kwargs: Any,
    ):
        if packed:
            raise ValueError(
                "Packed is currently not supported for preference datasets: set dataset.packed=False"
            )
        self._source = str(source)
        self._message_transform = message_transform
        self._tokenizer = tokenizer
        self._data, self._load_kwargs = load_rows(source, filter_fn, **load_dataset_kwargs)
        self._keep: np.ndarray | None = None  # [k] kept pairs, once some were dropped
        self._max_id: int | None = None
        self._rows_checked = False

    def __len__(self) -> int:
        return len(self._data) if self._keep is None else len(self._keep)

    def _tokenize(self, messages: list[Message]) -> tuple[list[int], list[int]]:
        tokens, mask = tokenize_conversation(
            messages, lambda: self._tokenizer.tokenize_messages(messages)
        )
        labels = np.where(mask, CROSS_ENTROPY_IGNORE_IDX, tokens).tolist()
        return list(tokens), labels

    def _where(self) -> str:
        return describe(self._source, self._load_kwargs)

    def _pair(self, index: int) -> tuple[dict[str, list[Message]], dict[str, list[int]]]:
        try:
            transformed = self._message_transform(self._data[index])
            chosen_ids, chosen_labels = self._tokenize(transformed["chosen"])
            rejected_ids, rejected_labels = self._tokenize(transformed["rejected"])
        except DataRowError as e:
            raise self._row_error(e, index) from None
        return transformed, {
            "chosen_input_ids": chosen_ids,
            "chosen_labels": chosen_labels,
            "rejected_input_ids": rejected_ids,
            "rejected_labels": rejected_labels,
        }

    def _row_error(self, e: DataRowError, index: int) -> DataRowError:
        """Row ``index``'s problem ``e`` as the one-line user error (row, column, file, key)."""
        setting = partial(column_setting, self._message_transform)
        return row_error(e, index, self._where(), self._data, setting)

    def _sides(self, index: int) -> list[tuple[list[Message], list[int], list[int]]]:
        """Row ``index``'s tokenized sequences: ``(messages, input_ids, labels)`` of the chosen
        and of the rejected side."""
        transformed, pair = self._pair(index)
        return [
            (transformed[side], pair[f"{side}_input_ids"], pair[f"{side}_labels"])
            for side in ("chosen", "rejected")
        ]

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if self._keep is not None:
            index = int(self._keep[index])
        return self._pair(index)[1]

    def max_token_id(self) -> int | None:
        """The largest token id of the pairs (known after ``drop_untrained_rows``)."""
        return self._max_id

    @property
    def num_skipped_rows(self) -> int | None:
        """Pairs left out by ``drop_untrained_rows`` (None before it ran)."""
        return len(self._data) - len(self) if self._rows_checked else None

    def drop_untrained_rows(self) -> None:
        """Tokenize every pair once and leave out the pairs where the chosen or the rejected
        side has no trained token (empty, truncated away, or all masked), with one warning;
        idempotent. A subclass's rows are its ``_sides`` (an unpaired row has one).

        Raises:
            DataError: when no pair (row) is left.
            DataRowError: for a row that cannot be tokenized (row, column, file named).
        """
        if self._rows_checked:
            return
        n = len(self._data)
        counts = np.zeros(n, dtype=np.int64)
        reasons: dict[int, str] = {}
        max_id = -1
        max_seq_len = getattr(self._tokenizer, "max_seq_len", None)
        for i in range(n):
            sides = []
            for messages, ids, labels in self._sides(i):
                trained = sum(1 for label in labels[1:] if label != CROSS_ENTROPY_IGNORE_IDX)
                sides.append(trained)
                if ids:
                    max_id = max(max_id, max(ids))
                if not trained and i not in reasons:
                    reasons[i] = why_untrained(
                        len(ids), max_seq_len, lambda m=messages: not has_trained_content(m)
                    )
            counts[i] = min(sides)
        self._max_id = max_id if max_id >= 0 else None
        self._keep = drop_untrained(
            self._where(),
            counts,
            reasons.__getitem__,
            max_seq_len=max_seq_len,
            unit=self._unit,
            detail=self._detail,
        )
        self._rows_checked = True


def preference_dataset(
    tokenizer: Any,
    *,
    source: str,
    column_map: dict[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    filter_fn: Callable | None = None,
    packed: bool = False,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> PreferenceDataset:
    """Rows ``{"chosen": [{"role", "content"}...], "rejected": [...]}`` (rename with
    ``column_map``); ``train_on_input=False`` trains on assistant turns only."""
    message_transform = ChosenRejectedToMessages(
        train_on_input=train_on_input, column_map=column_map, new_system_prompt=new_system_prompt
    )
    return PreferenceDataset(
        source=source,
        message_transform=message_transform,
        tokenizer=tokenizer,
        filter_fn=filter_fn,
        packed=packed,
        split=split,
        **load_dataset_kwargs,
    )


class StackExchangePairedToMessages:
    """Row ``{"prompt", "chosen", "rejected"}`` (strings; rename with ``column_map``) ->
    chosen and rejected conversations of a user prompt and an assistant answer."""

    def __init__(self, train_on_input: bool = False, column_map: dict[str, str] | None = None):
        self.train_on_input = train_on_input
        self.column_map = checked_column_map(
            column_map, ("prompt", "chosen", "rejected"), "StackExchangePairedToMessages"
        )

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, list[Message]]:
        prompt = text_column(sample, self.column_map["prompt"])
        out = {}
        for key in ("chosen", "rejected"):
            out[key] = [
                Message(role="user", content=prompt, masked=not self.train_on_input),
                Message(role="assistant", content=text_column(sample, self.column_map[key])),
            ]
        return out


def stack_exchange_paired_dataset(
    tokenizer: Any,
    *,
    source: str = "lvwerra/stack-exchange-paired",
    column_map: dict[str, str] | None = None,
    train_on_input: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> PreferenceDataset:
    """StackExchange question with a preferred (``response_j``) and a rejected
    (``response_k``) answer."""
    column_map = column_map or {
        "prompt": "question",
        "chosen": "response_j",
        "rejected": "response_k",
    }
    if is_hub_source(source):
        load_dataset_kwargs.setdefault("data_dir", "data/rl")
    return PreferenceDataset(
        source=source,
        message_transform=StackExchangePairedToMessages(train_on_input, column_map),
        tokenizer=tokenizer,
        filter_fn=filter_fn,
        split=split,
        **load_dataset_kwargs,
    )


def hh_rlhf_helpful_dataset(
    tokenizer: Any,
    *,
    source: str = "RLHFlow/HH-RLHF-Helpful-standard",
    column_map: dict[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> PreferenceDataset:
    """Anthropic HH-RLHF helpful subset in chosen / rejected message-list form."""
    return preference_dataset(
        tokenizer,
        source=source,
        column_map=column_map,
        train_on_input=train_on_input,
        new_system_prompt=new_system_prompt,
        filter_fn=filter_fn,
        split=split,
        **load_dataset_kwargs,
    )
