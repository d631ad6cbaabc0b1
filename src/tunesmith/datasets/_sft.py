"""Row datasets: HF rows -> messages -> tokens and labels, one row at a time or all at once.

``SFTDataset`` tokenizes lazily in ``__getitem__`` (like torchtune), so a huge dataset
costs nothing up front. ``tokenize_all()`` tokenizes every row in bulk (column batches
instead of per-row access, labels computed with one numpy call over the whole stream,
worker processes for large datasets) and caches the result on disk; packing and
length-grouped batching use it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Dataset

from tunesmith.data import CROSS_ENTROPY_IGNORE_IDX, DataRowError, TokenizedSamples
from tunesmith.datasets._cache import (
    _settings_repr,
    cache_enabled,
    cache_key,
    code_identity,
    fills_cache,
    load_cached,
    store_cached,
    tokenizer_identity,
)
from tunesmith.datasets._checks import drop_untrained, has_trained_content, why_untrained
from tunesmith.datasets._loading import data_fingerprint, describe, load_rows
from tunesmith.datasets._row_checks import (
    check_conversation,
    column_setting,
    row_error,
    tokenize_conversation,
)

__all__ = ["SFTDataset", "SFTTransform", "TokenizedRowDataset"]

logger = logging.getLogger(__name__)

_ROW_BATCH = 1024
_MIN_ROWS_PER_WORKER = 2000
_ACTIVE_DATASET: TokenizedRowDataset | None = None


def _default_workers() -> int:
    env = os.environ.get("TUNESMITH_DATA_WORKERS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _tokenize_range_in_worker(bounds: tuple[int, int]) -> TokenizedSamples:
    assert _ACTIVE_DATASET is not None
    return _ACTIVE_DATASET._tokenize_range(*bounds)


class SFTTransform:
    """``sample -> message_transform -> model_transform`` plus ``labels`` (-100 where masked).

    Returns the model transform's output with ``labels`` added, as torchtune's does.
    """

    def __init__(self, message_transform: Callable | None, model_transform: Callable | None):
        self.message_transform = message_transform
        self.model_transform = model_transform

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        transformed = self.message_transform(sample) if self.message_transform else dict(sample)
        if "messages" in transformed:
            check_conversation(transformed["messages"])
        if self.model_transform is None:
            return transformed
        out = dict(self.model_transform(transformed))
        if "tokens" not in out or "mask" not in out:
            raise ValueError(
                f"model_transform {type(self.model_transform).__name__} must return 'tokens' and "
                f"'mask', got keys {sorted(out)}"
            )
        tokens = np.asarray(out["tokens"], dtype=np.int64)
        out["labels"] = np.where(out["mask"], CROSS_ENTROPY_IGNORE_IDX, tokens).tolist()
        return out


class TokenizedRowDataset(Dataset):
    """Base for datasets whose rows each become one ``{"tokens", "labels"}`` sample.

    Subclasses implement ``_tokenize_row(row) -> (tokens, mask | None)`` (``mask[i]`` True =
    not trained on; None = train on every token), ``_identity()`` (the settings that
    decide the tokens, for the cache key) and ``_row_is_empty(row)`` (nothing to train on).

    ``drop_untrained_rows()`` (the recipes call it before training; ``PackedDataset`` before
    packing) tokenizes every row once and leaves out the rows with no trained token; from
    then on indices, ``len`` and ``samples()`` cover the kept rows only.
    """

    _data: Any
    _load_kwargs: dict[str, Any]
    _keep: np.ndarray | None = None  # [k] indices of the kept rows, once some were dropped
    _rows_checked = False

    def _load(self, source: str, filter_fn: Callable | None, load_kwargs: dict[str, Any]) -> None:
        self._source = str(source)
        self._data, self._load_kwargs = load_rows(source, filter_fn, **load_kwargs)
        self._tokenized: TokenizedSamples | None = None

    # -- subclass hooks -------------------------------------------------------------------
    def _tokenize_row(self, row: Mapping[str, Any]) -> tuple[Sequence[int], Sequence[bool] | None]:
        raise NotImplementedError

    def _identity(self) -> str:
        raise NotImplementedError

    def _row_is_empty(self, row: Mapping[str, Any]) -> bool:
        return False

    def _max_seq_len(self) -> int | None:
        """The length rows are truncated to (None: not truncated)."""
        return getattr(getattr(self, "_model_transform", None), "max_seq_len", None)

    def _column_setting(self, column: str) -> str:
        """The config key that names ``column`` (for messages)."""
        return column_setting(getattr(self, "_message_transform", None), column)

    # -- per-row access -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data) if self._keep is None else len(self._keep)

    def _where(self) -> str:
        return describe(self._source, self._load_kwargs)

    def _checked_tokenize(
        self, row: Mapping[str, Any], index: int
    ) -> tuple[Sequence[int], Sequence[bool] | None]:
        try:
            return self._tokenize_row(row)
        except DataRowError as e:
            raise row_error(e, index, self._where(), self._data, self._column_setting) from None

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if self._keep is not None:
            index = int(self._keep[index])
        if self._tokenized is not None:
            return self._tokenized.sample(index)
        tokens, mask = self._checked_tokenize(self._data[index], index)
        tokens = list(tokens)
        if mask is None:
            return {"tokens": tokens, "labels": list(tokens)}
        labels = np.where(mask, CROSS_ENTROPY_IGNORE_IDX, tokens).tolist()
        return {"tokens": tokens, "labels": labels}

    # -- bulk tokenization ----------------------------------------------------------------
    def _rows(self, start: int, end: int) -> Iterator[tuple[int, dict[str, Any]]]:
        index = start
        for lo in range(start, end, _ROW_BATCH):
            columns = self._data[lo : min(lo + _ROW_BATCH, end)]
            names = list(columns)
            for values in zip(*(columns[n] for n in names)):
                yield index, dict(zip(names, values))
                index += 1

    def _tokenize_range(self, start: int, end: int) -> TokenizedSamples:
        all_tokens: list[Sequence[int]] = []
        all_masks: list[Sequence[bool]] = []
        for index, row in self._rows(start, end):
            tokens, mask = self._checked_tokenize(row, index)
            all_tokens.append(tokens)
            all_masks.append([False] * len(tokens) if mask is None else mask)
        lengths = np.fromiter((len(t) for t in all_tokens), np.int64, count=len(all_tokens))
        offsets = np.zeros(len(all_tokens) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        tokens = np.fromiter(chain.from_iterable(all_tokens), np.int32, count=total)
        mask = np.fromiter(chain.from_iterable(all_masks), np.bool_, count=total)
        labels = np.where(mask, np.int32(CROSS_ENTROPY_IGNORE_IDX), tokens).astype(np.int32)
        return TokenizedSamples(tokens, labels, offsets)

    def cache_key(self) -> str | None:
        """Key of the on-disk tokenization cache (None when the settings are not hashable)."""
        try:
            identity = self._identity()
        except Exception as e:  # a tokenizer without encode/tokenize_messages, etc.
            logger.info("tokenization cache off for %s: %s", type(self).__name__, e)
            return None
        if " at 0x" in identity:  # an object without a stable repr is part of the settings
            return None
        data = data_fingerprint(self._data, self._load_kwargs)
        return cache_key(type(self).__qualname__, data, identity)

    def token_counts(self) -> tuple[int, int] | None:
        """``(tokens, trained tokens)`` of all rows once tokenized in bulk; None before (rows
        tokenized one at a time as batches are drawn are not counted up front)."""
        if self._tokenized is None:
            return None
        labels = self._tokenized.labels
        if self._keep is None:
            return len(labels), int((labels != CROSS_ENTROPY_IGNORE_IDX).sum())
        trained = np.zeros(len(labels) + 1, dtype=np.int64)
        np.cumsum(labels != CROSS_ENTROPY_IGNORE_IDX, out=trained[1:])
        offsets = self._tokenized.offsets
        starts, ends = offsets[:-1][self._keep], offsets[1:][self._keep]
        return int((ends - starts).sum()), int((trained[ends] - trained[starts]).sum())

    @property
    def num_skipped_rows(self) -> int | None:
        """Rows left out by ``drop_untrained_rows`` (None before it ran)."""
        return len(self._data) - len(self) if self._rows_checked else None

    def tokenize_all(
        self,
        num_workers: int | None = None,
        use_cache: bool = True,
        cache_dir: str | Path | None = None,
    ) -> TokenizedSamples:
        """Tokenize every row (or load the cached result) as one ``TokenizedSamples`` stream.

        Args:
            num_workers: processes (default ``TUNESMITH_DATA_WORKERS`` or the CPU count, at
                most 8; small datasets use one).
            use_cache: read/write the disk cache (also off with ``TUNESMITH_DATA_CACHE=0``).
            cache_dir: cache folder (default ``TUNESMITH_DATA_CACHE_DIR`` or
                ``~/.cache/tunesmith/tokenized``).
        """
        if self._tokenized is not None:
            return self._tokenized
        folder = Path(cache_dir).expanduser() if cache_dir is not None else None
        key = self.cache_key() if use_cache and cache_enabled() else None
        # Distributed: local rank 0 of each node tokenizes and writes the cache while the
        # other ranks wait, then they read it instead of all tokenizing the same rows.
        first = key is not None and _world_size() > 1
        filler = first and fills_cache(dist.get_rank())
        if first and not filler:
            dist.barrier()
        try:
            self._tokenized = self._load_or_tokenize(key, folder, num_workers)
        finally:
            if filler:
                dist.barrier()
        return self._tokenized

    def _load_or_tokenize(
        self, key: str | None, folder: Path | None, num_workers: int | None
    ) -> TokenizedSamples:
        if key is not None:
            cached = load_cached(key, folder)
            if cached is not None and len(cached) == len(self._data):
                logger.info("loaded tokenized %s from cache %s", self._where(), key)
                return cached
        samples = self._tokenize_parallel(num_workers)
        if key is not None:
            meta = {"dataset": type(self).__qualname__, "source": self._where(), "rows": len(self)}
            store_cached(key, samples, meta, folder)
        return samples

    def _tokenize_parallel(self, num_workers: int | None) -> TokenizedSamples:
        n = len(self._data)
        workers = min(num_workers or _default_workers(), max(1, n // _MIN_ROWS_PER_WORKER))
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            return self._tokenize_range(0, n)
        chunks = np.linspace(0, n, workers * 4 + 1).astype(int)
        bounds = [(int(a), int(b)) for a, b in zip(chunks[:-1], chunks[1:]) if b > a]
        global _ACTIVE_DATASET
        _ACTIVE_DATASET = self
        pool = multiprocessing.get_context("fork").Pool(workers)
        try:
            parts = pool.map(_tokenize_range_in_worker, bounds, chunksize=1)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
            _ACTIVE_DATASET = None
        return TokenizedSamples.concatenate(parts)

    def sample_lengths(self) -> np.ndarray:
        """``[n]`` token count of every sample (tokenizes everything once, cached)."""
        return self.samples().lengths

    def samples(self) -> TokenizedSamples:
        """The dataset's samples as one stream: ``tokenize_all()`` less the dropped rows."""
        samples = self.tokenize_all()
        return samples if self._keep is None else samples.select(self._keep)

    def max_token_id(self) -> int | None:
        """The largest token id of the rows (None for a dataset with no tokens)."""
        tokens = self.samples().tokens
        return int(tokens.max()) if len(tokens) else None

    def drop_untrained_rows(self, **tokenize_kwargs: Any) -> None:
        """Tokenize every row (``tokenize_all(**tokenize_kwargs)``, cached) and leave out the
        rows with no trained token, with one warning; idempotent.

        Raises:
            DataError: when no row has a trained token.
            DataRowError: for a row that cannot be tokenized (row, column, file named).
        """
        if self._rows_checked:
            return
        samples = self.tokenize_all(**tokenize_kwargs)
        lengths = samples.lengths
        max_seq_len = self._max_seq_len()

        def reason(i: int) -> str:
            return why_untrained(
                int(lengths[i]), max_seq_len, lambda: self._row_is_empty(self._data[i])
            )

        self._keep = drop_untrained(
            self._where(), samples.trained_targets(), reason, max_seq_len=max_seq_len
        )
        self._rows_checked = True


class SFTDataset(TokenizedRowDataset):
    """Rows -> ``message_transform`` -> ``model_transform`` (the tokenizer) -> tokens/labels.

    Args:
        source: ``datasets.load_dataset`` path: hub name, or ``json``/``parquet``/``csv``/
            ``arrow``/``text`` with ``data_files``, or a local file path.
        message_transform: row -> ``{"messages": list[Message]}``.
        model_transform: the tokenizer (``{"messages"} -> {"tokens", "mask"}``).
        filter_fn: keep rows where it returns True (``datasets.Dataset.filter``).
        **load_dataset_kwargs: passed to ``datasets.load_dataset`` (``split`` defaults to
            ``"train"``; ``data_files``, ``name``, ``data_dir``, ...).

    Samples are ``{"tokens": list[int], "labels": list[int]}``, labels -100 where masked.
    """

    def __init__(
        self,
        *,
        source: str,
        message_transform: Callable,
        model_transform: Callable,
        filter_fn: Callable | None = None,
        **load_dataset_kwargs: Any,
    ):
        self._message_transform = message_transform
        self._model_transform = model_transform
        self._load(source, filter_fn, load_dataset_kwargs)

    def _tokenize_row(self, row: Mapping[str, Any]) -> tuple[Sequence[int], Sequence[bool]]:
        transformed = self._message_transform(row)
        messages = transformed["messages"]

        def tokenize() -> tuple[Sequence[int], Sequence[bool]]:
            if not hasattr(self._model_transform, "image_transform") and any(
                m.get_media() for m in messages
            ):
                raise DataRowError(
                    "the row has an image but the tokenizer is text-only",
                    fix="use a vision model's transform as tokenizer and a multimodal dataset "
                    "(tunesmith.datasets.multimodal.*), or drop the image column",
                )
            out = self._model_transform(transformed)
            return out["tokens"], out["mask"]

        return tokenize_conversation(messages, tokenize)

    def _row_is_empty(self, row: Mapping[str, Any]) -> bool:
        return not has_trained_content(self._message_transform(row)["messages"])

    def _identity(self) -> str:
        transform = self._message_transform
        parts = (_settings_repr(transform), code_identity(transform))
        return "\n".join((*parts, tokenizer_identity(self._model_transform)))
