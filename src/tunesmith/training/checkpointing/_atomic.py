"""Checkpoint-folder bookkeeping on top of crash-safe file writes.

The file writes (temp file + fsync + rename) live in :mod:`tunesmith.utils` and are
re-exported here. A checkpoint folder becomes visible to loaders only once its
``.complete`` marker (written last, atomically) exists; folders without one are partial
and are ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunesmith.utils._atomic import (
    TMP_PREFIX,
    atomic_copy,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_path,
    fsync_dir,
)
from tunesmith.utils._integrity import CHECKSUM_ALGO, file_records, verify_records

__all__ = [
    "COMPLETE_MARKER",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_path",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_copy",
    "fsync_dir",
    "mark_complete",
    "read_complete_marker",
    "is_complete",
    "verify_checkpoint",
    "checkpoint_folder_name",
    "list_complete_checkpoints",
    "latest_complete_checkpoint",
    "prune_checkpoints",
    "publish_checkpoint_dir",
    "remove_partial_checkpoints",
    "staged_checkpoint_dir",
]

COMPLETE_MARKER = ".complete"
_CKPT_DIR_RE = re.compile(r"^(epoch|step)_(\d+)$")


def mark_complete(folder: str | os.PathLike[str], **info: Any) -> None:
    """Write the ``.complete`` marker into ``folder``: JSON with ``info``, a save time, the
    checksum algorithm and every file's relative path, size and checksum::

        {"saved_at_ns": ..., **info, "checksum": "xxh3_64",
         "files": {"model.safetensors": {"size": 1234, "hash": "9f0c..."}, ...}}

    Call this only after every other file of the checkpoint is durably written (the
    files are read back once to checksum them, from the page cache right after a save).
    """
    files = file_records(folder, exclude=(COMPLETE_MARKER,))
    payload = {"saved_at_ns": time.time_ns(), **info, "checksum": CHECKSUM_ALGO, "files": files}
    atomic_write_json(Path(folder) / COMPLETE_MARKER, payload)


def verify_checkpoint(
    folder: str | os.PathLike[str], only: Iterable[str] | None = None
) -> str | None:
    """What is wrong with a complete checkpoint folder, or None when it is intact.

    Checks every file its marker records (or just ``only``, relative paths) for size,
    then checksum. Markers written before file lists existed have nothing to check and
    pass. A folder without a readable marker is reported as such.
    """
    marker = read_complete_marker(folder)
    if marker is None:
        return f"{COMPLETE_MARKER} is missing or unreadable"
    files = marker.get("files")
    if not isinstance(files, dict):
        return None  # old marker: no file list
    if only is not None:
        only = [n for n in only if n in files]
    return verify_records(folder, files, str(marker.get("checksum", "")), only=only)


def read_complete_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker's JSON payload, or None when the folder is not a complete checkpoint."""
    marker = Path(folder) / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def is_complete(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a readable ``.complete`` marker."""
    return read_complete_marker(folder) is not None


def checkpoint_folder_name(epoch: int, step: int | None = None) -> str:
    """``step_{step}`` when a step is given, else ``epoch_{epoch}``."""
    return f"step_{step}" if step is not None else f"epoch_{epoch}"


def list_complete_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete ``epoch_*`` / ``step_*`` folders in ``output_dir``, oldest first.

    Ordered by the save time recorded in their markers (ties by name), so a mix of
    step and epoch folders sorts in the order they were written.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found: list[tuple[int, str, Path]] = []
    for child in root.iterdir():
        if not child.is_dir() or not _CKPT_DIR_RE.match(child.name):
            continue
        marker = read_complete_marker(child)
        if marker is None:
            continue
        found.append((int(marker.get("saved_at_ns", 0)), child.name, child))
    return [p for _, _, p in sorted(found)]


def latest_complete_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder in ``output_dir``, or None."""
    complete = list_complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def prune_checkpoints(
    output_dir: str | os.PathLike[str], keep_last_n: int | None, protect: Path | None = None
) -> list[Path]:
    """Delete all but the newest ``keep_last_n`` complete checkpoints; returns what was removed.

    The marker is removed first so a crash mid-delete leaves a partial (ignored) folder,
    never a complete-looking damaged one. ``protect`` is never removed.
    """
    if keep_last_n is None:
        return []
    if keep_last_n < 1:
        raise ValueError(
            f"keep_last_n_checkpoints must be a positive integer or null, got {keep_last_n}"
        )
    complete = list_complete_checkpoints(output_dir)
    doomed = [p for p in complete[:-keep_last_n] if protect is None or p != Path(protect)]
    for folder in doomed:
        (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        fsync_dir(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


@contextlib.contextmanager
def staged_checkpoint_dir(
    output_dir: str | os.PathLike[str], name: str, **marker_info: Any
) -> Iterator[Path]:
    """Yield an empty staging folder; on success mark it complete and rename it to ``name``.

    Files are written into ``output_dir/.tmp-{name}-{pid}``; only after the block
    finishes is the ``.complete`` marker written and the folder renamed to
    ``output_dir/{name}``, so a crash at any moment leaves either the previous state or
    the finished checkpoint. An existing folder of the same name is replaced.
    """
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        publish_checkpoint_dir(staging, name, **marker_info)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_checkpoint_dir(staging: str | os.PathLike[str], name: str, **marker_info: Any) -> Path:
    """Mark a fully written staging folder complete and rename it to ``name`` beside it.

    An existing folder of that name is moved aside first and deleted after the rename, so
    at every moment one complete folder answers to ``name`` (or, the very first time,
    none). Returns the final path.
    """
    staging = Path(staging)
    root = staging.parent
    mark_complete(staging, name=name, **marker_info)
    fsync_dir(staging)
    final = root / name
    if final.exists():
        old = root / f".old-{name}-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(final, old)
        os.rename(staging, final)
        fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, final)
    fsync_dir(root)
    return final


def remove_partial_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete ``epoch_*`` / ``step_*`` folders without a marker and stale staging folders.

    Call only from the single process that owns ``output_dir`` (rank 0) before saving.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = []
    for child in root.iterdir():
        if not child.is_dir():
            continue
        stale = child.name.startswith((TMP_PREFIX, ".old-"))
        if stale or (_CKPT_DIR_RE.match(child.name) and not is_complete(child)):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed
