"""Checking checkpoints before they are trusted, and saves that fail with one clear line.

* :func:`verify_input_files` runs before weights load: our own folders (a ``.complete``
  marker with a file list) are checked for size and checksum, downloaded folders against
  ``.tunesmith-manifest.json``; safetensors files without either get the header/size check
  and a zeroed-page scan (a warning: real tensors may hold a zero page).
* :func:`newest_intact_checkpoint` is the resume rule: the newest complete folder whose
  files match its marker; damaged newer ones are skipped with a warning naming the file.
* :func:`guarded_save` turns a full disk (``ENOSPC``, or torch's ``unexpected pos``) or an
  unwritable folder during a save into one line naming the folder, the bytes needed and
  free, and the previous checkpoint (untouched, since saves are staged).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tunesmith.training.checkpointing._atomic import (
    COMPLETE_MARKER,
    fsync_dir,
    latest_complete_checkpoint,
    list_complete_checkpoints,
    read_complete_marker,
    verify_checkpoint,
)
from tunesmith.utils._integrity import (
    CheckpointError,
    check_safetensors,
    verify_manifest,
    zeroed_pages,
)

__all__ = [
    "guarded_save",
    "newest_intact_checkpoint",
    "no_recipe_state_message",
    "retire_previous_run",
    "verify_input_files",
]

log = logging.getLogger(__name__)
_DISK_FULL_TEXT = (
    "No space left",
    "os error 28",
    "StorageFull",
    "unexpected pos",
    "file write failed",
)


def verify_input_files(folder: Path, files: Sequence[Path]) -> None:
    """Check the weight ``files`` of ``folder`` before they load (see the module doc)."""
    folder = Path(folder)
    # an adapter in a checkpoint's adapter/ sub-folder is covered by the parent's marker
    marker_dir = folder
    if read_complete_marker(folder) is None and read_complete_marker(folder.parent) is not None:
        marker_dir = folder.parent
    marker = read_complete_marker(marker_dir)
    checked = False
    if marker is not None and isinstance(marker.get("files"), dict):
        rels = _relative(files, marker_dir)
        problem = verify_checkpoint(marker_dir, only=rels)
        if problem is not None:
            raise CheckpointError(
                f"checkpoint file is damaged: {problem} ({marker_dir}): copy it again, or use "
                "an earlier checkpoint"
            )
        checked = all(r in marker["files"] for r in rels)
    verify_manifest(folder, only=_relative(files, folder))
    for f in files:
        if Path(f).suffix != ".safetensors":
            continue
        header = check_safetensors(f)
        if checked:
            continue
        zeroed = zeroed_pages(f, header)
        if zeroed:
            log.warning(
                "%s: %d tensor(s) hold a whole zeroed 4096-byte page although they are not all "
                "zero (%s%s); the file may be damaged: compare it with its source or download "
                "it again",
                f,
                len(zeroed),
                ", ".join(zeroed[:3]),
                ", ..." if len(zeroed) > 3 else "",
            )


def _relative(files: Sequence[Path], root: Path) -> list[str]:
    out = []
    for f in files:
        try:
            out.append(Path(f).resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            continue
    return out


def newest_intact_checkpoint(output_dir: Path, logger: logging.Logger = log) -> Path | None:
    """The newest complete folder of ``output_dir`` whose files match its marker, or None
    when there is no complete folder; raises :class:`CheckpointError` when all are damaged."""
    damaged: list[str] = []
    for folder in reversed(list_complete_checkpoints(output_dir)):
        problem = verify_checkpoint(folder)
        if problem is None:
            if damaged:
                logger.warning(
                    "resuming from %s, the newest intact checkpoint (skipped newer: %s)",
                    folder,
                    "; ".join(damaged),
                )
            return folder
        damaged.append(f"{folder.name} is damaged: {problem}")
    if damaged:
        raise CheckpointError(
            f"no intact checkpoint to resume from ({output_dir}: {'; '.join(damaged)}): start a "
            "fresh run with another output_dir, or overwrite=True"
        )
    return None


def no_recipe_state_message(source: Path, marker: dict[str, Any]) -> str:
    """Why a resume source without ``recipe_state.pt`` cannot resume, as one message."""
    if marker.get("has_recipe_state") is False:
        return (
            "the newest checkpoint is the end-of-training save, which holds no recipe state "
            f"({source}): training already finished; to train further start a new run from "
            f"it (checkpointer.checkpoint_dir={source}, resume_from_checkpoint=False)"
        )
    return (
        f"recipe_state.pt is missing from the newest checkpoint ({source}): resume from an "
        "earlier checkpoint (move this folder away) or start a fresh run"
    )


def retire_previous_run(folders: Sequence[Path], keep: Path) -> None:
    """Remove a previous run's complete folders (``overwrite=True``) once ``keep``, the new
    run's first checkpoint, is published; the marker goes first, as in pruning."""
    for folder in folders:
        if Path(folder) == Path(keep) or not Path(folder).is_dir():
            continue
        (Path(folder) / COMPLETE_MARKER).unlink(missing_ok=True)
        fsync_dir(folder)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s of the previous run (overwrite=True)", folder)


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list (the size a save will take, roughly)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def guarded_save(output_dir: Path, name: str, parts: Any) -> Iterator[None]:
    """Wrap one staged save: a full disk or unwritable folder becomes a :class:`CheckpointError`
    (the staged folder is already removed; earlier checkpoints are untouched)."""
    output_dir = Path(output_dir)
    free = shutil.disk_usage(output_dir).free if output_dir.is_dir() else 0
    try:
        yield
    except Exception as e:  # OSError, torch's RuntimeError, safetensors' SafetensorError
        code = getattr(e, "errno", None)
        text = str(e)
        previous = latest_complete_checkpoint(output_dir)
        intact = (
            f"the previous checkpoint {previous.name} is intact"
            if previous is not None
            else "no earlier checkpoint exists"
        )
        needed = _nbytes(parts)
        if code in (errno.ENOSPC, errno.EDQUOT) or any(t in text for t in _DISK_FULL_TEXT):
            raise CheckpointError(
                f"disk full while saving checkpoint {name}: needs about {_mb(needed)}, "
                f"{_mb(free)} were free ({output_dir}): {intact}; free space or point "
                "output_dir at a larger disk, then rerun with resume_from_checkpoint=True"
            ) from None
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise CheckpointError(
                f"cannot write checkpoint {name}: {getattr(e, 'strerror', e)} ({output_dir}): {intact}; make "
                "the folder writable or pick another output_dir"
            ) from None
        raise
