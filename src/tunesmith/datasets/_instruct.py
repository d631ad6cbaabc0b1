"""Instruct (single-turn input -> output) dataset builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunesmith.data import AlpacaToMessages, InputOutputToMessages
from tunesmith.datasets._common import sft_dataset

__all__ = [
    "instruct_dataset",
    "alpaca_dataset",
    "alpaca_cleaned_dataset",
    "samsum_dataset",
    "grammar_dataset",
]


def instruct_dataset(
    tokenizer: Any,
    *,
    source: str,
    column_map: dict[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    split_across_pack: bool = False,
    **load_dataset_kwargs: Any,
) -> Any:
    """Rows ``{"input", "output"}`` (rename with ``column_map={"input": ..., "output": ...}``)
    become a user and an assistant message; ``train_on_input=False`` trains on the output only.

    Returns an ``SFTDataset``, or a ``PackedDataset`` of ``tokenizer.max_seq_len`` when
    ``packed=True``. ``source="json", data_files="my.json"`` loads a local file.
    """
    message_transform = InputOutputToMessages(
        train_on_input=train_on_input, column_map=column_map, new_system_prompt=new_system_prompt
    )
    return sft_dataset(
        tokenizer,
        message_transform,
        source=source,
        filter_fn=filter_fn,
        split=split,
        packed=packed,
        split_across_pack=split_across_pack,
        **load_dataset_kwargs,
    )


def alpaca_dataset(
    tokenizer: Any,
    *,
    source: str = "tatsu-lab/alpaca",
    column_map: dict[str, str] | None = None,
    train_on_input: bool = True,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    split_across_pack: bool = False,
    **load_dataset_kwargs: Any,
) -> Any:
    """Alpaca rows ``{"instruction", "input", "output"}`` formatted with the Alpaca prompt
    (the with-input or no-input variant) as the user message; trains on the prompt too by
    default, as torchtune does."""
    message_transform = AlpacaToMessages(train_on_input=train_on_input, column_map=column_map)
    return sft_dataset(
        tokenizer,
        message_transform,
        source=source,
        filter_fn=filter_fn,
        split=split,
        packed=packed,
        split_across_pack=split_across_pack,
        **load_dataset_kwargs,
    )


def alpaca_cleaned_dataset(
    tokenizer: Any, *, source: str = "yahma/alpaca-cleaned", **kwargs: Any
) -> Any:
    """``alpaca_dataset`` on the cleaned Alpaca data (``yahma/alpaca-cleaned``)."""
    return alpaca_dataset(tokenizer, source=source, **kwargs)


def _instruct_preset(
    name: str, default_source: str, columns: dict[str, str], doc: str
) -> Callable[..., Any]:
    """torchtune's ``<name>(tokenizer, *, source, column_map, ...)``: ``instruct_dataset`` of
    ``default_source`` with the dataset's ``{"input": ..., "output": ...}`` columns."""

    def builder(
        tokenizer: Any,
        *,
        source: str = default_source,
        column_map: dict[str, str] | None = None,
        train_on_input: bool = False,
        new_system_prompt: str | None = None,
        packed: bool = False,
        filter_fn: Callable | None = None,
        split: str = "train",
        **load_dataset_kwargs: Any,
    ) -> Any:
        return instruct_dataset(
            tokenizer,
            source=source,
            column_map=column_map or dict(columns),
            train_on_input=train_on_input,
            new_system_prompt=new_system_prompt,
            packed=packed,
            filter_fn=filter_fn,
            split=split,
            **load_dataset_kwargs,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = __name__
    builder.__doc__ = doc
    return builder


samsum_dataset = _instruct_preset(
    "samsum_dataset",
    "Samsung/samsum",
    {"input": "dialogue", "output": "summary"},
    "Dialogue summarization (``dialogue`` -> ``summary``). As in torchtune the summarize "
    "prompt comes from the tokenizer's ``prompt_template`` (``SummarizeTemplate``).",
)
grammar_dataset = _instruct_preset(
    "grammar_dataset",
    "liweili/c4_200m",
    {"input": "input", "output": "output"},
    "Grammar correction (``input`` -> ``output``). As in torchtune the prompt comes from "
    "the tokenizer's ``prompt_template`` (``GrammarErrorCorrectionTemplate``).",
)
