"""File integrity: fast checksums, file manifests and safetensors sanity checks.

Layer 0 (no torch import), so both ``tunesmith.models`` (PEFT adapters) and
``tunesmith.training`` (checkpoints) use it.

* :func:`file_records` lists every file of a folder with its size and a fast streaming
  checksum (``xxh3_64`` when the ``xxhash`` package is importable, ~20 GB/s; else zlib's
  ``crc32``, ~5 GB/s); the ``.complete`` marker of a checkpoint stores it and
  :func:`verify_records` checks a folder against it (sizes first, then checksums).
* :data:`MANIFEST_NAME` (``.tunesmith-manifest.json``, written by ``tunesmith download``)
  holds ``{"files": {relpath: {"size": int, "sha256": str | None}}}`` as the hub reported
  them; :func:`verify_manifest` checks sizes always and sha256 once per file version
  (remembered by path, size and mtime in the user cache, since sha256 runs at ~1.5 GB/s).
* :func:`check_safetensors` names a truncated file (expected vs actual size from its
  header) or an unreadable header; :func:`zeroed_pages` finds whole zeroed 4096-byte pages
  inside float tensors that are not entirely zero (the trace of a zeroed disk region).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tunesmith.config._errors import ConfigError

__all__ = [
    "CHECKSUM_ALGO",
    "MANIFEST_NAME",
    "CheckpointError",
    "CheckpointNotFoundError",
    "check_safetensors",
    "file_checksum",
    "file_records",
    "verify_manifest",
    "verify_records",
    "zeroed_pages",
]

MANIFEST_NAME = ".tunesmith-manifest.json"
_CHUNK = 8 << 20
PAGE = 4096
_SCAN_BYTES = 1 << 24  # the zeroed-page scan reads 16 MiB at a time
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}


class CheckpointError(ConfigError):
    """A user-fixable problem with a checkpoint or output folder (damaged, missing, full).

    The message reads ``<what> (<where>): <what to do>``; the CLI prints it as one
    ``error:`` line.
    """


class CheckpointNotFoundError(FileNotFoundError, CheckpointError):
    """A checkpoint file or folder the config names does not exist."""

    def __init__(self, message: str, key: str | None = None) -> None:
        FileNotFoundError.__init__(self, message)
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


def _hasher(algo: str) -> Callable[[], Any]:
    if algo == "xxh3_64":
        import xxhash

        return xxhash.xxh3_64
    if algo == "crc32":
        return _Crc32
    return lambda: hashlib.new(algo)


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _default_algo() -> str:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "crc32"
    return "xxh3_64"


CHECKSUM_ALGO = _default_algo()


def algo_available(algo: str) -> bool:
    """Whether this process can compute ``algo`` (xxh3_64 needs the xxhash package)."""
    if algo == "xxh3_64":
        return CHECKSUM_ALGO == "xxh3_64"
    return algo == "crc32" or algo in hashlib.algorithms_available


def file_checksum(path: str | os.PathLike[str], algo: str = CHECKSUM_ALGO) -> str:
    """Hex digest of the file at ``path``, read in 8 MiB chunks."""
    h = _hasher(algo)()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def file_records(
    folder: str | os.PathLike[str], exclude: Iterable[str] = (), algo: str = CHECKSUM_ALGO
) -> dict[str, dict[str, Any]]:
    """``{relpath: {"size": bytes, "hash": hex}}`` for every file under ``folder``
    (recursively, ``/``-separated relative paths), except the names in ``exclude``."""
    root = Path(folder)
    skip = set(exclude)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in skip:
            continue
        rel = path.relative_to(root).as_posix()
        out[rel] = {"size": path.stat().st_size, "hash": file_checksum(path, algo)}
    return out


def verify_records(
    folder: str | os.PathLike[str],
    files: dict[str, dict[str, Any]],
    algo: str,
    only: Iterable[str] | None = None,
) -> str | None:
    """The first problem of ``folder`` against its recorded ``files``, or None when intact.

    Sizes of all files are checked before any checksum (cheap first). ``only`` limits the
    check to those relative paths. A checksum of an algorithm this process cannot compute
    (``xxh3_64`` without ``xxhash``) is skipped; sizes are still checked.
    """
    root = Path(folder)
    names = [n for n in files if only is None or n in set(only)]
    for rel in names:
        path = root / rel
        want = int(files[rel]["size"])
        try:
            got = path.stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if got != want:
            return f"{rel} is {got} bytes, its marker recorded {want}"
    if not algo_available(algo):
        return None
    for rel in names:
        want_hash = files[rel].get("hash")
        if want_hash and file_checksum(root / rel, algo) != want_hash:
            return f"{rel} does not match its recorded {algo} checksum (its bytes changed)"
    return None


# ---------------------------------------------------------------------------- hub manifest
def _verified_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tunesmith" / "verified-sha256.json"


def _read_cache() -> dict[str, Any]:
    try:
        return json.loads(_verified_cache().read_text())
    except (OSError, ValueError):
        return {}


def _remember(entries: dict[str, Any]) -> None:
    if not entries:
        return
    from tunesmith.utils._atomic import atomic_write_json

    cache = _read_cache()
    cache.update(entries)
    try:
        atomic_write_json(_verified_cache(), cache, indent=None)
    except OSError:  # a read-only home only costs a re-check next time
        pass


def verify_manifest(folder: str | os.PathLike[str], only: Iterable[str] | None = None) -> None:
    """Check files of ``folder`` against its ``.tunesmith-manifest.json`` (when present).

    Sizes are checked on every call; a file's sha256 (when the manifest has one) is
    computed once per version of the file (path, size, mtime) and remembered in the user
    cache. Raises :class:`CheckpointError` naming the file; a no-op without a manifest.
    """
    root = Path(folder)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"unreadable download manifest ({manifest_path}): delete it or download the model again"
        ) from None
    wanted = set(only) if only is not None else None
    todo = [rel for rel in files if wanted is None or rel in wanted]
    for rel in todo:
        path, want = root / rel, files[rel].get("size")
        if not path.is_file():
            continue  # the checkpointer names missing files it needs
        if want is not None and path.stat().st_size != int(want):
            raise CheckpointError(
                f"file is {path.stat().st_size} bytes but the hub reported {want} ({path}): "
                "it is truncated or damaged; download the model again"
            )
    cache, fresh = _read_cache(), {}
    for rel in todo:
        path, sha = root / rel, files[rel].get("sha256")
        if not sha or not path.is_file():
            continue
        st = path.stat()
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns, sha]
        if cache.get(key) == stamp:
            continue
        if file_checksum(path, "sha256") != sha:
            raise CheckpointError(
                f"file does not match the sha256 the hub reported ({path}): its bytes are "
                "damaged; download the model again"
            )
        fresh[key] = stamp
    _remember(fresh)


# ----------------------------------------------------------------------------- safetensors
def check_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed header of a .safetensors file; raises :class:`CheckpointError` naming the
    file when it is shorter than its header says or the header does not parse."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"safetensors file is {size} bytes, too short for a header ({path}): it is "
                "truncated; copy or download it again"
            )
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise CheckpointError(
                f"safetensors header claims {n} bytes but the file has {size} ({path}): the file "
                "is truncated or not safetensors; copy or download it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"safetensors header does not parse ({e}) ({path}): the file is damaged; copy or "
            "download it again"
        ) from None
    expected = 8 + n + end
    if size < expected:
        raise CheckpointError(
            f"safetensors file is truncated: {size} bytes, its header needs {expected} ({path}): "
            "copy or download it again"
        )
    return header


def zeroed_pages(path: str | os.PathLike[str], header: dict[str, Any] | None = None) -> list[str]:
    """Float tensors of a .safetensors file holding a whole zeroed 4096-byte page (aligned
    to the file) although the tensor is not all zero: ``["name (page at byte N)", ...]``.

    A damaged or badly copied file often has such pages (filesystems lose whole blocks);
    a real tensor rarely does, but may (a zero padding-embedding row), hence callers warn.
    """
    import mmap

    import numpy as np

    path = Path(path)
    header = header if header is not None else check_safetensors(path)
    size = path.stat().st_size
    if size < 2 * PAGE:
        return []
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    data_start = 8 + n
    # read with preadv into one bounded buffer, reused for every read: not a map of the
    # file (its touched pages count as this process's resident memory: every rank would peak
    # at the whole file), nor a fresh bytes object per read (two were alive at a time, and
    # the freed ones stayed in glibc's heap, ~19 MiB per rank, benchmarks/NOTES.md §16). The
    # buffer is an anonymous map of its own, unmapped once the last view of it is gone.
    fd = os.open(path, os.O_RDONLY)
    buffer = np.frombuffer(mmap.mmap(-1, min(_SCAN_BYTES, size)), dtype=np.uint8)

    def read(lo: int, hi: int) -> np.ndarray:
        """Bytes ``[lo, hi)`` of the file (``hi - lo <= _SCAN_BYTES``), valid until the next
        read."""
        return buffer[: os.preadv(fd, [buffer[: hi - lo]], lo)]

    try:
        return _zeroed_pages(header, data_start, read)
    finally:
        os.close(fd)


def _zeroed_pages(header: dict[str, Any], data_start: int, read: Any) -> list[str]:
    import numpy as np

    found: list[str] = []
    for name, info in header.items():
        if name == "__metadata__" or info.get("dtype") not in _FLOAT_DTYPES:
            continue
        lo, hi = (data_start + int(x) for x in info["data_offsets"])
        first = -(-lo // PAGE) * PAGE  # whole pages fully inside [lo, hi)
        last = hi // PAGE * PAGE
        if last - first < PAGE:
            continue
        zero_at = None
        for start in range(first, last, _SCAN_BYTES):
            stop = min(last, start + _SCAN_BYTES)
            pages = read(start, stop).view(np.uint64).reshape(-1, PAGE // 8)
            candidates = np.flatnonzero(pages[:, 0] == 0)  # one word per page first: cheap
            if candidates.size:
                empty = np.bitwise_or.reduce(pages[candidates], axis=1) == 0
                if empty.any():
                    zero_at = start + int(candidates[np.argmax(empty)]) * PAGE
                    break
        if zero_at is None:
            continue
        nonzero = any(  # all-zero tensors (fresh LoRA B, biases) are fine
            read(a, min(hi, a + _SCAN_BYTES)).any() for a in range(lo, hi, _SCAN_BYTES)
        )
        if nonzero:
            found.append(f"{name} (page at byte {zero_at})")
    return found
