"""Text completion (continued pre-training) datasets: one text column, every token trained."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tunesmith.datasets._cache import tokenizer_identity
from tunesmith.datasets._common import is_hub_source, maybe_pack
from tunesmith.datasets._row_checks import text_column
from tunesmith.datasets._sft import TokenizedRowDataset

__all__ = [
    "TextCompletionDataset",
    "text_completion_dataset",
    "wikitext_dataset",
    "cnn_dailymail_articles_dataset",
]


class TextCompletionDataset(TokenizedRowDataset):
    """Each row's ``column`` text -> ``tokenizer.encode(text, add_bos=True, add_eos=add_eos)``,
    truncated to ``max_seq_len - 1`` tokens (``max_seq_len`` defaults to the tokenizer's; the
    ``- 1`` is torchtune's); labels = tokens."""

    def __init__(
        self,
        tokenizer: Any,
        source: str,
        column: str = "text",
        add_eos: bool = True,
        filter_fn: Callable | None = None,
        max_seq_len: int | None = None,
        **load_dataset_kwargs: Any,
    ):
        self._tokenizer = tokenizer
        self._max_seq_len_arg = max_seq_len
        self._column = column
        self.add_eos = add_eos
        self._load(source, filter_fn, load_dataset_kwargs)

    def _text(self, row: Mapping[str, Any]) -> str:
        return text_column(row, self._column, "dataset.column")

    def _tokenize_row(self, row: Mapping[str, Any]) -> tuple[Sequence[int], Sequence[bool] | None]:
        text = self._text(row)
        tokens = self._tokenizer.encode(text, add_bos=True, add_eos=self.add_eos)
        max_seq_len = self._max_seq_len()
        if max_seq_len is not None:
            tokens = tokens[:max_seq_len]
        if not text.strip():  # a blank document: nothing to learn but BOS -> EOS
            return tokens, [True] * len(tokens)
        return tokens, None

    def _max_seq_len(self) -> int | None:
        max_seq_len = self._max_seq_len_arg or getattr(self._tokenizer, "max_seq_len", None)
        return None if max_seq_len is None else max_seq_len - 1

    def _row_is_empty(self, row: Mapping[str, Any]) -> bool:
        return not self._text(row).strip()

    def _column_setting(self, column: str) -> str:
        return "dataset.column"

    def _identity(self) -> str:
        return (
            f"column={self._column!r} add_eos={self.add_eos} max_seq_len={self._max_seq_len_arg}\n"
            + tokenizer_identity(self._tokenizer)
        )


def text_completion_dataset(
    tokenizer: Any,
    source: str,
    column: str = "text",
    add_eos: bool = True,
    packed: bool = False,
    split_across_pack: bool = True,
    split: str = "train",
    filter_fn: Callable | None = None,
    max_seq_len: int | None = None,
    **load_dataset_kwargs: Any,
) -> Any:
    """Unstructured text in ``column``. With ``packed=True`` documents are cut at pack
    boundaries by default (``split_across_pack=True``)."""
    ds = TextCompletionDataset(
        tokenizer,
        source=source,
        column=column,
        add_eos=add_eos,
        filter_fn=filter_fn,
        max_seq_len=max_seq_len,
        split=split,
        **load_dataset_kwargs,
    )
    return maybe_pack(ds, tokenizer, packed, split_across_pack)


def wikitext_dataset(
    tokenizer: Any,
    source: str = "EleutherAI/wikitext_document_level",
    subset: str = "wikitext-103-v1",
    max_seq_len: int | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> Any:
    """WikiText documents (column ``page``); ``subset`` is the hub config name;
    ``max_seq_len`` overrides the tokenizer's truncation length."""
    if is_hub_source(source):
        load_dataset_kwargs.setdefault("name", subset)
    return text_completion_dataset(
        tokenizer,
        source=source,
        column="page",
        max_seq_len=max_seq_len,
        packed=packed,
        filter_fn=filter_fn,
        split=split,
        **load_dataset_kwargs,
    )


def cnn_dailymail_articles_dataset(
    tokenizer: Any,
    source: str = "ccdv/cnn_dailymail",
    max_seq_len: int | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> Any:
    """CNN / DailyMail news articles (column ``article``, hub config ``3.0.0``)."""
    if is_hub_source(source):
        load_dataset_kwargs.setdefault("name", "3.0.0")
    return text_completion_dataset(
        tokenizer,
        source=source,
        column="article",
        max_seq_len=max_seq_len,
        packed=packed,
        filter_fn=filter_fn,
        split=split,
        **load_dataset_kwargs,
    )
