"""A dataset row's checks, shared by the SFT, preference and unpaired (KTO) datasets.

What a row must be before it is trained on: its columns present and of the right type, its
transform's ``column_map`` keys known, its conversation valid (roles in order), and
tokenizable (a tokenizer's ``ValueError`` becomes the row's :class:`DataRowError`). A row
whose trained messages are empty keeps only masked tokens, so the datasets' untrained-row
check (``_checks``) finds and leaves it out. :func:`row_error` turns a row's problem into
the one-line user error naming the row, the column, the file and the config key to set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tunesmith.data import DataRowError, Message, validate_messages
from tunesmith.datasets._checks import has_trained_content

__all__: list[str] = []


def checked_column_map(
    column_map: Mapping[str, str] | None, expected: tuple[str, ...], name: str
) -> dict[str, str]:
    """``{key: column}`` for every ``expected`` key (a key ``column_map`` leaves out names the
    column of its own name). Raises ``ValueError`` for a key not in ``expected``; ``name``
    (the transform) is named in the message."""
    unknown = set(column_map or {}) - set(expected)
    if unknown:
        raise ValueError(
            f"{name}: column_map has unknown key(s) {sorted(unknown)}; "
            f"expected keys are {list(expected)}"
        )
    return {k: (column_map or {}).get(k, k) for k in expected}


def text_column(sample: Mapping[str, Any], column: str, setting: str = "column_map") -> str:
    """The string in ``sample[column]``; a missing column or a non-string value is the
    row's ``DataRowError`` (a missing one names ``setting``, the key to set)."""
    if column not in sample:
        raise DataRowError(
            f"missing column; the row has columns {sorted(sample)}. Set {setting}", column=column
        )
    value = sample[column]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise DataRowError(f"expected a string, got {kind}", column=column)
    return value


def check_conversation(messages: list[Message]) -> None:
    """Refuse a conversation whose roles are out of order (``validate_messages``) as the
    row's ``DataRowError``."""
    try:
        validate_messages(messages)
    except ValueError as e:
        raise DataRowError(f"invalid conversation: {e}") from None


def tokenize_conversation(
    messages: list[Message], tokenize: Callable[[], tuple[Sequence[int], Sequence[bool]]]
) -> tuple[Sequence[int], Sequence[bool]]:
    """``tokenize()`` of a row's ``messages`` -> ``(tokens, mask)`` (``mask[i]`` True = not
    trained on), after :func:`check_conversation`.

    A ``ValueError`` of the tokenizer (e.g. image content for a text-only one) is the row's
    ``DataRowError``; a row with no trained content (empty responses: nothing to learn but
    the end-of-turn token) comes back with every token masked.
    """
    check_conversation(messages)
    trained = has_trained_content(messages)  # before the tokenizer consumes the messages
    try:
        tokens, mask = tokenize()
    except DataRowError:
        raise
    except ValueError as e:
        raise DataRowError(f"cannot tokenize the row: {e}") from None
    if not trained:
        mask = [True] * len(tokens)
    return tokens, mask


def column_setting(message_transform: Any, column: str) -> str:
    """The config key that names dataset column ``column``: ``dataset.column_map.<key>`` for
    the transform key mapped to it (or the builder's own key, e.g. ``conversation_column``,
    from the transform's ``config_keys``)."""
    column_map = getattr(message_transform, "column_map", None) or {}
    for key, mapped in column_map.items():
        if mapped == column:
            own = (getattr(message_transform, "config_keys", None) or {}).get(key)
            return f"dataset.{own or f'column_map.{key}'}"
    return "dataset.column_map"


def row_error(
    e: DataRowError, index: int, where: str, data: Any, setting: Callable[[str], str]
) -> DataRowError:
    """``e`` from row ``index`` as the one-line user error: a column the whole dataset lacks
    names the columns it has and the key to set; any other row problem names the row."""
    columns = list(getattr(data, "column_names", None) or [])
    if e.column is not None and columns and e.column not in columns:
        key = setting(e.column)
        error = DataRowError(
            f"missing column; the dataset has columns {columns}",
            column=e.column,
            row_index=index,
            source=f"dataset {where}",
            fix=f"set {key} to the column that holds it"
            + (f" (e.g. {key}={columns[0]})" if key != "dataset.column_map" else ""),
        )
        error.key = key
        return error
    return DataRowError(
        e.reason,
        column=e.column,
        row_index=index,
        source=f"dataset {where}",
        fix="fix or drop the row (e.g. with filter_fn), or map the right columns with column_map",
    )
