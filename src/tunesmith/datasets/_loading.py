"""Loading rows through Hugging Face ``datasets`` and fingerprinting where they came from.

``source`` is what ``datasets.load_dataset`` takes: a hub name (``"yahma/alpaca-cleaned"``)
or a builder for local files (``"json"``, ``"parquet"``, ``"csv"``, ``"arrow"``, ``"text"``)
with ``data_files=...``. As a convenience a path to a local file or folder also works as
``source`` (the builder is picked from the file extension).

Every failure is a one-line :class:`~tunesmith.data.DataError` naming the file (and line,
byte or column) and what to change; ``datasets`` internals never reach the user. Local files
are checked before ``load_dataset`` runs (missing, a glob matching nothing, a folder,
unreadable, empty); when ``load_dataset`` fails anyway each file is read once more to find
the first bad byte (not UTF-8), JSON line or CSV / parquet problem.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunesmith.data import DataError
from tunesmith.data._errors import DataFileNotFoundError, DataSourceUnreachableError
from tunesmith.datasets._file_problems import file_problem, one_line, utf8_problem

__all__: list[str] = []

_BUILDER_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
}
_LOCAL_BUILDERS = ("json", "parquet", "csv", "arrow", "text", "pandas")
_FORMATS = "source: json (or parquet, csv, arrow, text) with data_files: path/to/file"


def _local_source(source: str, kwargs: dict[str, Any]) -> str:
    """Turn ``source="data/x.jsonl"`` into ``source="json", data_files="data/x.jsonl"``."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in _BUILDER_BY_SUFFIX and "data_files" not in kwargs:
        kwargs["data_files"] = str(path)
        return _BUILDER_BY_SUFFIX[path.suffix]
    return source


def _flatten_files(data_files: Any) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str | os.PathLike):
        return [str(data_files)]
    if isinstance(data_files, Mapping):
        return [f for value in data_files.values() for f in _flatten_files(value)]
    return [f for value in data_files for f in _flatten_files(value)]


def _local_files(data_files: Any) -> list[Path]:
    """The existing local files ``data_files`` names (globs expanded, URLs left out)."""
    out: list[Path] = []
    for pattern in _flatten_files(data_files):
        if "://" in pattern:
            continue
        expanded = os.path.expanduser(pattern)
        matches = (
            sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(pattern) else [expanded]
        )
        out += [Path(m) for m in matches if Path(m).is_file()]
    return out


def describe(source: str, load_kwargs: Mapping[str, Any]) -> str:
    """Where rows come from, for messages: the data file(s), else the hub name and split."""
    files = _flatten_files(load_kwargs.get("data_files"))
    if files:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        return shown if source in _LOCAL_BUILDERS else f"{source} {shown}"
    split = load_kwargs.get("split")
    return f"{source}" + (f" split {split!r}" if split else "")


def _cwd_note() -> str:
    return f"working directory {os.getcwd()}"


def _check_source(source: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse, before ``load_dataset`` runs, what cannot work: a misspelt builder, a local
    path that does not exist, data files that are missing, folders, unreadable or empty."""
    looks_like_path = (
        source.startswith((".", "~", "/")) or Path(source).suffix in _BUILDER_BY_SUFFIX
    )
    if looks_like_path and not Path(source).expanduser().exists():
        raise DataFileNotFoundError(
            f"dataset file {source!r} does not exist",
            f"dataset.source, {_cwd_note()}",
            "fix the path (or use source: json with data_files: <path>)",
            key="dataset.source",
        )
    files = _flatten_files(kwargs.get("data_files"))
    local = source in _LOCAL_BUILDERS or Path(source).expanduser().exists()
    if files and not local:
        close = difflib.get_close_matches(source.lower(), _LOCAL_BUILDERS, n=1, cutoff=0.5)
        if close or "/" not in source:
            hint = f"did you mean source: {close[0]}?" if close else f"use {_FORMATS}"
            raise DataError(
                f"dataset source {source!r} is not a file format",
                "dataset.source",
                f"{hint} Local files need {_FORMATS}",
                key="dataset.source",
            )
    if not files and source in _LOCAL_BUILDERS:
        raise DataError(
            f"dataset source {source!r} reads local files but no data_files are given",
            "dataset.data_files",
            "set dataset.data_files: path/to/file (a path, a glob, or a list of them)",
            key="dataset.data_files",
        )
    empty = []
    for pattern in files:
        if "://" in pattern:
            continue
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(pattern):
            if not glob.glob(expanded, recursive=True):
                raise DataFileNotFoundError(
                    f"data_files pattern {pattern!r} matches no file",
                    f"dataset.data_files, {_cwd_note()}",
                    "fix the pattern or the folder it looks in",
                    key="dataset.data_files",
                )
            continue
        path = Path(expanded)
        if not path.exists():
            raise DataFileNotFoundError(
                f"data file {pattern!r} does not exist",
                f"dataset.data_files, {_cwd_note()}",
                "fix the dataset.data_files path in the config",
                key="dataset.data_files",
            )
        if path.is_dir():
            suffix = next((s for s, b in _BUILDER_BY_SUFFIX.items() if b == source), ".json")
            raise DataError(
                f"data_files entry {pattern!r} is a folder",
                "dataset.data_files",
                f"name the files in it, e.g. data_files: {pattern.rstrip('/')}/*{suffix}",
                key="dataset.data_files",
            )
        try:
            with path.open("rb") as f:
                head = f.read(64)
        except OSError as e:
            raise DataError(
                "cannot read data file",
                str(path),
                f"{e.strerror or e}; check that the file is readable (permissions)",
                key="dataset.data_files",
            ) from e
        if head.strip() in (b"", b"[]", b"{}") and path.stat().st_size <= 64:
            empty.append(pattern)
    if empty and len(empty) == len(files):
        raise DataError(
            "data file is empty" if len(empty) == 1 else "every data file is empty",
            ", ".join(empty),
            "add rows to it, or point dataset.data_files at the file that holds them",
            key="dataset.data_files",
        )


def _root_cause(e: BaseException) -> BaseException:
    """The innermost exception of ``e``'s cause / context chain."""
    seen = {id(e)}
    while True:
        inner = e.__cause__ or e.__context__
        if inner is None or id(inner) in seen:
            return e
        seen.add(id(inner))
        e = inner


def _load_error(source: str, kwargs: Mapping[str, Any], e: Exception) -> DataError:
    """One line for a failed ``load_dataset``: the bad file / line / split when it can be
    found, else the innermost ``datasets`` / arrow message with where the rows came from."""
    where = describe(source, kwargs)
    message = " ".join(str(e).split())
    split = kwargs.get("split")
    if isinstance(e, ValueError) and "split" in message.lower():
        known = re.search(r"(?:Should be one of|one of) (\[[^\]]*\])", message)
        hint = f"one of {known.group(1)}" if known else "a split the dataset has"
        local = " (local files have a single 'train' split)" if source in _LOCAL_BUILDERS else ""
        return DataError(
            f"split {split!r} does not exist",
            f"dataset.split, dataset {where}",
            f"set dataset.split to {hint}{local}",
            key="dataset.split",
        )
    if "corresponds to no data" in message:
        return DataError(
            f"the dataset has no rows (split {split!r})",
            f"dataset {where}",
            "add rows, or point dataset.data_files / dataset.split at the ones that hold them",
            key="dataset",
        )
    chain = [e]
    while chain[-1].__cause__ or chain[-1].__context__:
        inner = chain[-1].__cause__ or chain[-1].__context__
        if inner in chain:
            break
        chain.append(inner)  # type: ignore[arg-type]
    names = " ".join(type(x).__name__ for x in chain)
    if (
        isinstance(e, ConnectionError)
        or "LocalEntryNotFound" in names
        or "Couldn't reach" in message
    ):
        return DataSourceUnreachableError(
            f"dataset {source!r} looks like a Hugging Face hub name and the hub could not be "
            "reached",
            "dataset.source",
            f"go online, or point the config at a local file: {_FORMATS}",
            key="dataset.source",
        )
    if "DatasetNotFound" in names or (
        isinstance(e, FileNotFoundError) and not kwargs.get("data_files")
    ):
        return DataFileNotFoundError(
            f"dataset {source!r} was not found (not a local path, not a hub dataset)",
            f"dataset.source, {_cwd_note()}",
            f"fix the name, or for local files use {_FORMATS}",
            key="dataset.source",
        )
    if source in _LOCAL_BUILDERS:
        for path in _local_files(kwargs.get("data_files")):
            problem = file_problem(source, path, kwargs)
            if problem is not None:
                problem.key = "dataset.data_files"
                return problem
    return DataError(
        f"could not load the dataset: {one_line(_root_cause(e))}",
        f"dataset {where}",
        "check the data files and the dataset.* keys (source, data_files, split, name)",
        key="dataset",
    )


def _check_text(data: Any, source: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse strings that are not UTF-8 (pyarrow's JSON reader lets them through, and they
    would fail when a row is read): one full validation of the arrow table."""
    import pyarrow as pa

    table = getattr(getattr(data, "data", None), "table", None)
    if table is None:
        return
    try:
        table.validate(full=True)
    except pa.ArrowInvalid as e:
        for path in _local_files(kwargs.get("data_files")):
            problem = utf8_problem(path)
            if problem is not None:
                problem.key = "dataset.data_files"
                raise problem from e
        raise DataError(
            f"the dataset holds invalid text: {one_line(e)}",
            f"dataset {describe(source, kwargs)}",
            "re-encode the data as UTF-8",
            key="dataset",
        ) from e


def load_rows(
    source: str, filter_fn: Callable[[Any], bool] | None = None, **load_dataset_kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    """Load one split with ``datasets.load_dataset`` and apply ``filter_fn``.

    Returns ``(hf_dataset, effective_load_kwargs)`` (``source`` included as ``"path"``).

    Raises:
        DataError: naming the file (line, byte), split or config key, for every way the
            rows cannot be read, and for a dataset with no rows (also after ``filter_fn``).
    """
    import datasets

    kwargs = dict(load_dataset_kwargs)
    kwargs.setdefault("split", "train")
    source = _local_source(str(source), kwargs)
    _check_source(source, kwargs)
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors are ours to tell
    bars = datasets.utils.are_progress_bars_disabled()
    if not sys.stderr.isatty():  # progress bars only where someone watches them
        datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset(source, **kwargs)
    except Exception as e:  # datasets' own messages and tracebacks never reach the user
        raise _load_error(source, kwargs, e) from e
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars:
            datasets.enable_progress_bars()
    where = describe(source, kwargs)
    if isinstance(data, datasets.DatasetDict):
        raise DataError(
            f"the dataset has several splits {list(data)}",
            f"dataset {where}",
            "set dataset.split to one of them",
            key="dataset.split",
        )
    if isinstance(data, datasets.IterableDataset):
        raise DataError(
            "streaming datasets are not supported",
            f"dataset {where}",
            "drop streaming=True",
            key="dataset.streaming",
        )
    if len(data) == 0:
        raise DataError(
            f"the dataset has no rows (split {kwargs['split']!r})",
            f"dataset {where}",
            "add rows, or point dataset.data_files / dataset.split at the ones that hold them",
            key="dataset",
        )
    _check_text(data, source, kwargs)
    if filter_fn is not None:
        data = data.filter(filter_fn)
        if len(data) == 0:
            raise DataError(
                "filter_fn removed every row",
                f"dataset {where}, dataset.filter_fn",
                "check the filter (it must return True for the rows to keep)",
                key="dataset.filter_fn",
            )
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
