"""What is wrong with one local data file, per format: the first byte that is not UTF-8, the
first malformed JSON line (or position in a JSON document), a CSV parser error, an unreadable
parquet or arrow file. ``_loading`` asks when ``datasets.load_dataset`` fails, so the user's
one-line :class:`~tunesmith.data.DataError` names the file, line or byte offset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.data import DataError

__all__: list[str] = []

_TEXT_BUILDERS = ("json", "csv", "text")


def one_line(e: BaseException, limit: int = 300) -> str:
    """``e``'s message on one line, at most ``limit`` characters, without a final period."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.rstrip(".")


def utf8_problem(path: Path) -> DataError | None:
    """The first byte of ``path`` that is not UTF-8, as an error naming line and offset."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                line = lines + chunk[: e.start].count(b"\n")
                return DataError(
                    f"data file is not UTF-8 text (byte 0x{chunk[e.start]:02x})",
                    f"{path}, line {line}, byte offset {bad}",
                    "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 in > out",
                )
            offset += len(chunk)
            lines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return DataError(
            "data file is not UTF-8 text (it ends inside a multi-byte character)",
            f"{path}, line {lines}, byte offset {offset}",
            "re-save the file as UTF-8; it may be truncated",
        )
    return None


def _json_problem(path: Path) -> DataError | None:
    """The first malformed line of a JSON Lines file (or position in a JSON document)."""
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):  # one JSON document: a list of rows
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return DataError(
                "malformed JSON",
                f"{path}, line {e.lineno}, column {e.colno}",
                f"{e.msg}; fix the file (a .json file holds one list of {{...}} rows)",
            )
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                return DataError(
                    f"JSON row {i} is a {type(row).__name__}, not an object",
                    str(path),
                    'every row must be a {"column": value, ...} object',
                )
        return None
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as line_error:
                err, at = line_error, number
                if number == 1 and head.startswith("{"):
                    try:  # a single pretty-printed JSON object
                        json.loads(path.read_text(encoding="utf-8"))
                        return None
                    except json.JSONDecodeError as whole:
                        err, at = whole, whole.lineno
                return DataError(
                    "malformed JSON",
                    f"{path}, line {at}, column {err.colno}",
                    f"{err.msg}; fix or delete the line (a .jsonl file holds one {{...}} row per "
                    "line)",
                )
            if not isinstance(row, dict):
                return DataError(
                    f"JSON line is a {type(row).__name__}, not an object",
                    f"{path}, line {number}",
                    'each line of a .jsonl file must be one {"column": value, ...} row',
                )
    return None


def _csv_problem(path: Path, kwargs: Mapping[str, Any]) -> DataError | None:
    import pandas as pd

    options = {k: kwargs[k] for k in ("sep", "delimiter", "quotechar") if k in kwargs}
    try:
        pd.read_csv(path, **options)
    except Exception as e:  # pandas' parser errors name the line
        return DataError("malformed CSV", str(path), f"{one_line(e)}; fix the file")
    return None


def _parquet_problem(path: Path) -> DataError | None:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).schema_arrow  # noqa: B018 - reads the footer
    except Exception as e:
        return DataError(
            "not a readable parquet file",
            str(path),
            f"{one_line(e)}; re-export the file (it may be truncated or in another format)",
        )
    return None


def _arrow_problem(path: Path) -> DataError | None:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            try:
                pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                pa.ipc.open_file(source).read_all()
    except Exception as e:
        return DataError("not a readable arrow file", str(path), f"{one_line(e)}")
    return None


def file_problem(builder: str, path: Path, kwargs: Mapping[str, Any]) -> DataError | None:
    """What is wrong with one local file for ``builder``, or None when it looks fine."""
    if builder in _TEXT_BUILDERS:
        problem = utf8_problem(path)
        if problem is not None:
            return problem
    if builder == "json":
        return _json_problem(path)
    if builder == "csv":
        return _csv_problem(path, kwargs)
    if builder == "parquet":
        return _parquet_problem(path)
    if builder == "arrow":
        return _arrow_problem(path)
    return None
