"""Crash-safe file writes.

Every file is written to a temporary name in its destination folder, flushed and
fsynced, then renamed over the final name (``os.replace`` is atomic on POSIX), and the
folder is fsynced so the rename itself survives a power cut. A crash at any moment
leaves either the old file or the new one, never a torn one. Layer 0, so both
``tunesmith.models`` (PEFT adapters) and ``tunesmith.training`` (checkpoints) use it;
torch and safetensors are imported only by the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "TMP_PREFIX",
    "atomic_copy",
    "atomic_save_safetensors",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_path",
    "fsync_dir",
]

# Temporary files (and staged checkpoint folders) start with this; loaders skip them.
TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so renames and new entries inside it are durable."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replace_on_success(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    The caller writes and fsyncs the temporary file. On any exception it is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    with _replace_on_success(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_path(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_path)`` (a writer that wants a file name), then fsync and rename."""
    with _replace_on_success(path) as tmp:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file, fsync and rename."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the file ``src`` to ``dst`` atomically."""
    with open(src, "rb") as fin, atomic_write(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=16 * 1024 * 1024)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a .safetensors file atomically (tensors contiguous, on CPU, no shared storage).

    Tensors that share storage with an earlier one are cloned (safetensors refuses
    shared storage). ``metadata`` defaults to ``{"format": "pt"}`` as transformers writes.
    """
    from safetensors.torch import save_file

    clean: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        t = v.detach().to("cpu").contiguous()
        ident = t.untyped_storage().data_ptr()
        if t.numel() and ident in seen:
            t = t.clone()
        seen.add(ident)
        clean[k] = t
    atomic_write_path(
        path, lambda tmp: save_file(clean, str(tmp), metadata=metadata or {"format": "pt"})
    )
