"""Pre-flight checks of a run's output folders, before any model weights load.

:func:`preflight_outputs` refuses a new (non-resume) run into an ``output_dir`` that holds
complete checkpoints of an earlier run (``epoch_N`` / ``step_N``, or DCP ones under
``distributed/``) unless ``overwrite=True``; checks that the checkpoint and log folders
can be written (by writing and removing a probe file: permission bits say nothing for
root or read-only mounts); and that the checkpoint folder's disk has room for at least
one checkpoint the size of the base weights.

With ``overwrite=True`` nothing is deleted up front: a folder of the same name is
replaced when the new one is published, and the earlier run's other folders are removed
right after the new run's first checkpoint is published (``CheckpointerBase.replaces``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunesmith.training.checkpointing._atomic import TMP_PREFIX, list_complete_checkpoints
from tunesmith.utils._integrity import CheckpointError

__all__ = [
    "base_checkpoint_bytes",
    "check_writable",
    "previous_checkpoints",
    "preflight_files",
    "preflight_outputs",
]


def previous_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders already in ``output_dir`` (also under ``distributed/``)."""
    root = Path(output_dir)
    return list_complete_checkpoints(root) + list_complete_checkpoints(root / "distributed")


def check_writable(folder: str | os.PathLike[str], key: str) -> None:
    """Write and remove a probe file in ``folder`` (or, when it does not exist yet, in its
    nearest existing parent, so nothing is created); a failure raises :class:`CheckpointError`
    naming ``key``."""
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # probe the folder that would hold it: create nothing yet
    probe = existing / f"{TMP_PREFIX}preflight-{os.getpid()}"
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
        with open(probe, "wb") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(
            f"output folder is not writable: {e.strerror or e} ({key}={path}): pick another "
            f"{key.rsplit('.', 1)[-1]} or make it writable"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def base_checkpoint_bytes(checkpointer_cfg: Mapping[str, Any]) -> int:
    """Size on disk of the weight files ``checkpointer_cfg`` reads (0 when they cannot be
    resolved: the checkpointer then reports that itself)."""
    from tunesmith.training.checkpointing._files import resolve_checkpoint_files

    try:
        files = resolve_checkpoint_files(
            checkpointer_cfg["checkpoint_dir"], checkpointer_cfg["checkpoint_files"]
        )
        return sum(f.stat().st_size for f in files)
    except Exception:  # noqa: BLE001 (reported with a better message by the checkpointer)
        return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def preflight_outputs(
    output_dir: str | os.PathLike[str],
    *,
    resume: bool,
    overwrite: bool = False,
    log_dirs: Sequence[str | os.PathLike[str]] = (),
    need_bytes: int = 0,
    key: str = "checkpointer.output_dir",
) -> list[Path]:
    """Check the output folders of a run about to start (see the module doc).

    ``need_bytes``: the size of one checkpoint (the base weights' size is a fair estimate).
    Returns the previous run's folders that ``overwrite=True`` will replace ([] otherwise).
    """
    if resume and overwrite:
        raise CheckpointError(
            "overwrite=True and resume_from_checkpoint=True contradict each other (overwrite): "
            "keep resume_from_checkpoint=True to continue the run, or drop it to start over"
        )
    root = Path(output_dir).expanduser()
    previous = previous_checkpoints(root)
    if previous and not resume and not overwrite:
        names = ", ".join(p.relative_to(root).as_posix() for p in previous[-3:])
        raise CheckpointError(
            f"output_dir already holds checkpoints of an earlier run ({key}={root}: {names}): "
            "resume it with resume_from_checkpoint=True, pick another output_dir, or pass "
            "overwrite=True to replace them"
        )
    check_writable(root, key)
    for i, log_dir in enumerate(log_dirs):
        if log_dir is not None:
            check_writable(log_dir, "metric_logger.log_dir" if i == 0 else "log_dir")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if need_bytes and free < need_bytes:
        raise CheckpointError(
            f"not enough free disk space for one checkpoint: about {_mb(need_bytes)} needed (the "
            f"base weights' size), {_mb(free)} free ({key}={root}): free space or pick an "
            "output_dir on a larger disk"
        )
    return previous if overwrite else []


def preflight_files(
    output_dir: str | os.PathLike[str],
    names: Sequence[str],
    *,
    overwrite: bool = False,
    need_bytes: int = 0,
    key: str = "output_dir",
) -> None:
    """Pre-flight of a recipe that writes a few named files into ``output_dir`` (quantize,
    eval): refuse when one of ``names`` already exists there unless ``overwrite=True``, check
    the folder can be written and, with ``need_bytes``, that its disk has that much room.
    Nothing is created or removed."""
    root = Path(output_dir).expanduser()
    taken = [n for n in names if (root / n).exists()]
    if taken and not overwrite:
        raise CheckpointError(
            f"output_dir already holds {', '.join(taken)} from an earlier run ({key}={root}): "
            "pick another output_dir, or pass overwrite=True to replace it"
        )
    check_writable(root, key)
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if need_bytes and free < need_bytes:
        raise CheckpointError(
            f"not enough free disk space: about {_mb(need_bytes)} needed, {_mb(free)} free "
            f"({key}={root}): free space or pick an output_dir on a larger disk"
        )
