"""Loading rows through Hugging Face ``datasets`` and fingerprinting where they came from.

``source`` is what ``datasets.load_dataset`` takes: a hub name (``"yahma/alpaca-cleaned"``)
or a builder for local files (``"json"``, ``"parquet"``, ``"csv"``, ``"arrow"``, ``"text"``)
with ``data_files=...``. As a convenience a path to a local file or folder also works as
``source`` (the builder is picked from the file extension).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__: list[str] = []

_BUILDER_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
}


def _local_source(source: str, kwargs: dict[str, Any]) -> str:
    """Turn ``source="data/x.jsonl"`` into ``source="json", data_files="data/x.jsonl"``."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in _BUILDER_BY_SUFFIX and "data_files" not in kwargs:
        kwargs["data_files"] = str(path)
        return _BUILDER_BY_SUFFIX[path.suffix]
    return source


def _check_data_files(source: str, data_files: Any) -> None:
    files = _flatten_files(data_files)
    for f in files:
        if "://" in f or glob.has_magic(f):
            continue
        if not Path(f).expanduser().exists():
            raise FileNotFoundError(
                f"dataset source={source!r}: data_files entry {f!r} does not exist "
                f"(working directory {os.getcwd()}). Fix the dataset.data_files path in the config"
            )


def _flatten_files(data_files: Any) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str | os.PathLike):
        return [str(data_files)]
    if isinstance(data_files, Mapping):
        return [f for value in data_files.values() for f in _flatten_files(value)]
    return [f for value in data_files for f in _flatten_files(value)]


def load_rows(
    source: str, filter_fn: Callable[[Any], bool] | None = None, **load_dataset_kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    """Load one split with ``datasets.load_dataset`` and apply ``filter_fn``.

    Returns ``(hf_dataset, effective_load_kwargs)`` (``source`` included as ``"path"``).
    """
    import datasets

    kwargs = dict(load_dataset_kwargs)
    kwargs.setdefault("split", "train")
    source = _local_source(str(source), kwargs)
    _check_data_files(source, kwargs.get("data_files"))
    try:
        data = datasets.load_dataset(source, **kwargs)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"dataset source={source!r} could not be loaded ({e}). For local files use "
            "source: json (or parquet, csv, arrow, text) with data_files: <path>; hub names "
            "need network access to huggingface.co"
        ) from e
    except ConnectionError as e:
        raise ConnectionError(
            f"dataset source={source!r} looks like a Hugging Face hub name and the hub could not "
            f"be reached ({e}). Offline, point the config at a local file: source: json (or "
            "parquet, csv, arrow, text) and data_files: path/to/file"
        ) from e
    except ValueError as e:
        if "split" in str(e).lower():
            raise ValueError(
                f"dataset source={source!r}: {e}. Set dataset.split to one of the splits above "
                "(local files have a single 'train' split)"
            ) from e
        raise
    if isinstance(data, datasets.DatasetDict):
        raise ValueError(
            f"dataset source={source!r} returned several splits {list(data)}; set dataset.split"
        )
    if isinstance(data, datasets.IterableDataset):
        raise ValueError(
            f"dataset source={source!r}: streaming datasets are not supported; drop streaming=True"
        )
    if filter_fn is not None:
        data = data.filter(filter_fn)
    return data, {"path": source, **kwargs}


def _file_stats(data_files: Any) -> list[tuple[str, int, int]]:
    stats = []
    for pattern in _flatten_files(data_files):
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) or [pattern]
        for match in matches:
            path = Path(match)
            paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for p in paths:
                try:
                    st = p.stat()
                except OSError:
                    stats.append((str(p), -1, -1))
                    continue
                stats.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return stats


# load_dataset arguments that change where or how rows are read, never which rows
_NOT_CONTENT = frozenset(
    {
        "data_files",
        "cache_dir",
        "num_proc",
        "download_mode",
        "verification_mode",
        "keep_in_memory",
        "storage_options",
        "token",
        "download_config",
    }
)


def data_fingerprint(hf_dataset: Any, load_kwargs: Mapping[str, Any]) -> str:
    """Identity of the loaded rows: load arguments, local files (path, size, mtime) and the
    ``datasets`` fingerprint (which also covers ``filter_fn``)."""
    parts = [
        repr(sorted((k, repr(v)) for k, v in load_kwargs.items() if k not in _NOT_CONTENT)),
        repr(_file_stats(load_kwargs.get("data_files"))),
        str(getattr(hf_dataset, "_fingerprint", "")),
        str(len(hf_dataset)),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
