"""Rows with nothing to train on: found once, at build time, then left out (or refused).

A row trains on nothing when every next-token target is masked: its trained messages are
empty, truncation at ``max_seq_len`` cut every trained token away, or the masking (e.g.
``train_on_input=False`` on a row with no assistant text) hides them all. Such rows would
train with ``loss=0`` and skew the step's token count, so the datasets drop them when they
are built (deterministically, before any sampler sees the indices: every rank and every
resumed run sees the same rows) and say so in one warning; a dataset where every row is
like that is a :class:`~tunesmith.data.DataError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tunesmith.data import DataError, Message
from tunesmith.utils import get_logger

__all__: list[str] = []

log = get_logger(__name__)

EMPTY, TRUNCATED, MASKED = "empty", "truncated", "masked"
_SHOWN_ROWS = 8


def has_trained_content(messages: Sequence[Message]) -> bool:
    """Whether a trained (unmasked) message holds any non-blank text or any media."""
    return any(not m.masked and (m.text_content.strip() or m.contains_media) for m in messages)


def why_untrained(length: int, max_seq_len: int | None, empty: Callable[[], bool]) -> str:
    """``TRUNCATED`` when the row filled ``max_seq_len``, ``EMPTY`` when ``empty()``, else
    ``MASKED`` (``empty`` is called only when needed: it may re-read the row)."""
    if max_seq_len is not None and length >= max_seq_len:
        return TRUNCATED
    if length == 0 or empty():
        return EMPTY
    return MASKED


def _breakdown(reasons: Mapping[str, int], max_seq_len: int | None) -> tuple[str, str]:
    """``("5 empty, 7 cut away by truncation at max_seq_len=256", "<what to do>")``."""
    what = {
        EMPTY: "empty",
        TRUNCATED: f"cut away by truncation at max_seq_len={max_seq_len}",
        MASKED: "every token masked",
    }
    todo = {
        EMPTY: "fill in or drop the empty rows",
        TRUNCATED: f"raise tokenizer.max_seq_len (now {max_seq_len}) or shorten the prompts",
        MASKED: "check train_on_input / masking_strategy and the message roles",
    }
    order = [r for r in (EMPTY, TRUNCATED, MASKED) if reasons.get(r)]
    parts = ", ".join(f"{reasons[r]} {what[r]}" for r in order)
    return parts, "; ".join(todo[r] for r in order)


def drop_untrained(
    where: str,
    counts: np.ndarray,
    reason: Callable[[int], str],
    *,
    max_seq_len: int | None,
    unit: str = "rows",
    detail: str = "",
) -> np.ndarray | None:
    """The indices to keep, given ``counts[i]`` = trained targets of row ``i``.

    Returns None when every row trains on something. Otherwise logs one warning (rank 0)
    naming how many rows are skipped, the first row indices and why (``reason(i)`` gives
    ``EMPTY`` / ``TRUNCATED`` / ``MASKED`` for a skipped row ``i``), and returns the kept
    indices ``[k]`` in order.

    Raises:
        DataError: when no row trains on anything.
    """
    bad = np.flatnonzero(counts == 0)
    if len(bad) == 0:
        return None
    reasons = Counter(reason(int(i)) for i in bad)
    breakdown, todo = _breakdown(reasons, max_seq_len)
    total = len(counts)
    shown = ", ".join(str(int(i)) for i in bad[:_SHOWN_ROWS])
    shown += ", ..." if len(bad) > _SHOWN_ROWS else ""
    label = "row" if len(bad) == 1 else "rows"
    subject = f"with no trained token{detail}"
    if len(bad) == total:
        raise DataError(
            f"none of the {total} {unit} has a trained token{detail} ({breakdown})",
            f"dataset {where}",
            todo,
        )
    if _is_rank_zero():
        log.warning(
            f"skipped {len(bad)} of {total} {unit} {subject} ({label} {shown}; dataset {where}): "
            f"{breakdown}; {todo}"
        )
    return np.flatnonzero(counts > 0)


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def max_token_id(dataset: Any) -> int | None:
    """The largest token id ``dataset`` feeds the model (None when it cannot tell cheaply):
    its own ``max_token_id()``, or the maximum over the parts of a ``ConcatDataset``."""
    own = getattr(dataset, "max_token_id", None)
    if callable(own):
        return own()
    parts = getattr(dataset, "datasets", None)  # torch.utils.data.ConcatDataset
    if isinstance(parts, Sequence):
        found = [max_token_id(d) for d in parts]
        known = [f for f in found if f is not None]
        return max(known) if known and len(known) == len(found) else None
    return None


def check_token_ids(
    datasets: Sequence[Any], tokenizer: Any, vocab_size: int | None, model: str
) -> None:
    """Refuse data whose token ids do not fit a model with ``vocab_size`` embeddings.

    Looks at the largest id in the tokenized data (every built tunesmith dataset knows it)
    and the tokenizer's pad / bos / eos ids (padding feeds ``pad_id`` to the model).
    ``model`` names the model in the message.

    Raises:
        DataError: naming the tokenizer, the model's vocabulary size and the largest id.
    """
    if not vocab_size:
        return
    found = [(max_token_id(d), f"dataset {i}") for i, d in enumerate(datasets)]
    for name in ("pad_id", "bos_id", "eos_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            found.append((value, f"tokenizer.{name}"))
    known = [(v, what) for v, what in found if v is not None]
    if not known:
        return
    largest = max(v for v, _ in known)
    if largest < vocab_size:
        return
    sources = [what for v, what in known if v == largest]
    source = "the tokenized data" if sources[0].startswith("dataset") else sources[0]
    raise DataError(
        f"token id {largest} (from {source}) does not fit the model's vocabulary of "
        f"{vocab_size} ids",
        f"tokenizer {_tokenizer_name(tokenizer)}, model {model}",
        f"use the tokenizer that belongs to the model (tokenizer._component_ and its path), "
        f"or a model whose vocabulary holds at least {largest + 1} ids",
        key="tokenizer",
    )


def _tokenizer_name(tokenizer: Any) -> str:
    name = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
    for attr in ("path", "tokenizer_json_path", "vocab_path"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, str):
            return f"{name} ({value})"
    return name
