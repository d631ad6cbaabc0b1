"""Disk cache of tokenized datasets, so a second run skips tokenization.

A tokenized dataset is stored as ``tokens.npy``, ``labels.npy`` and ``offsets.npy``
(the ``TokenizedSamples`` stream) in ``<cache dir>/<key>/``, loaded memory-mapped.
The key hashes the data (load arguments, file paths + sizes + mtimes, the
``datasets`` fingerprint), the row transform's settings and the tokenizer's identity
(class, settings, and the tokens it produces for a probe conversation). Packing is
recomputed from the cached stream on every run: it takes milliseconds.

Environment:
    ``TUNESMITH_DATA_CACHE=0`` disables the cache.
    ``TUNESMITH_DATA_CACHE_DIR`` moves it (default ``~/.cache/tunesmith/tokenized``).
    ``LOCAL_RANK`` (torchrun): on a distributed run, local rank 0 of each node tokenizes and
    writes the cache while the other ranks wait, then they read it (:func:`fills_cache`).
    ``TUNESMITH_DATA_CACHE_MAX_GB`` caps its size (default 20): after a write, the least
    recently used entries beyond the cap are deleted.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data import Message, TokenizedSamples

__all__: list[str] = []

CACHE_FORMAT_VERSION = 2  # 2: rows with empty trained messages are masked entirely
_PROBE_TEXT = (
    "Hello world! Ünïcödé, 数字 12345, tabs\tand\nnewlines  <|x|> <s> [INST] "
    "def f(x):\n    return x ** 2  # comment"
)


def cache_enabled() -> bool:
    """False when ``TUNESMITH_DATA_CACHE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("TUNESMITH_DATA_CACHE", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def fills_cache(rank: int) -> bool:
    """True for the process that tokenizes and writes the cache on its node: local rank 0
    (``LOCAL_RANK``, as torchrun sets it), or global ``rank`` 0 when ``LOCAL_RANK`` is unset.

    On a multi-node run each node's first process fills its own (usually node-local) cache
    folder while the node's other processes wait, instead of global rank 0 filling only its
    own node's; on a shared folder the nodes write the same entry atomically.
    """
    local = os.environ.get("LOCAL_RANK")
    return int(local) == 0 if local not in (None, "") else rank == 0


def default_cache_dir() -> Path:
    env = os.environ.get("TUNESMITH_DATA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/tunesmith/tokenized").expanduser()


def _simple_repr(value: Any, depth: int = 0) -> str | None:
    """A deterministic repr of plain settings, or None when something is not plain."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return repr(value)
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    if isinstance(value, list | tuple | dict) and len(value) > 256:
        return None  # vocabularies and other bulk data: covered by the probe ids
    if isinstance(value, list | tuple):
        items = [_simple_repr(v, depth) for v in value]
        return None if None in items else "[" + ",".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(value, dict):
        items = [(_simple_repr(k, depth), _simple_repr(v, depth)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "{" + ",".join(sorted(f"{k}:{v}" for k, v in items)) + "}"
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):
        return f"{type(value).__qualname__}.{value.value}"  # enums
    if depth < 1 and hasattr(value, "__dict__"):
        inner = _simple_repr(vars(value), depth + 1)
        return (
            None if inner is None else f"{type(value).__module__}.{type(value).__qualname__}{inner}"
        )
    return None


def _settings_repr(obj: Any) -> str:
    """Class name plus the plain-valued attributes (non-plain ones contribute their type)."""
    if obj is None:
        return "None"
    fields = []
    for name, value in sorted(getattr(obj, "__dict__", {}).items()):
        text = _simple_repr(value)
        fields.append(f"{name}={text if text is not None else type(value).__qualname__}")
    return f"{type(obj).__module__}.{type(obj).__qualname__}(" + ",".join(fields) + ")"


def code_identity(obj: Any) -> str:
    """Source files (path, mtime) of the classes of ``obj`` and of its attributes, so editing
    a tokenizer or a custom transform invalidates the cache."""
    classes = {type(obj), *(type(v) for v in getattr(obj, "__dict__", {}).values())}
    files = set()
    for cls in classes:
        for klass in cls.__mro__:
            try:
                path = Path(inspect.getfile(klass))
                files.add(f"{path}:{path.stat().st_mtime_ns}")
            except (TypeError, OSError):  # builtins, classes made at run time
                continue
    return repr(sorted(files))


def tokenizer_identity(tokenizer: Any) -> str:
    """Class, settings, files (size + mtime) and the ids of a probe text and conversation."""
    parts = [_settings_repr(tokenizer), code_identity(tokenizer)]
    for value in getattr(tokenizer, "__dict__", {}).values():
        if isinstance(value, str | os.PathLike) and len(os.fspath(value)) < 4096:
            path = Path(os.fspath(value))
            try:
                if path.is_file():
                    st = path.stat()
                    parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                pass
    if hasattr(tokenizer, "encode"):
        parts.append(repr(tokenizer.encode(_PROBE_TEXT, add_bos=True, add_eos=True)))
    if hasattr(tokenizer, "tokenize_messages"):
        messages = [
            Message("system", "Be brief."),
            Message("user", _PROBE_TEXT, masked=True),
            Message("assistant", _PROBE_TEXT[::-1]),
        ]
        tokens, mask = tokenizer.tokenize_messages(messages)
        parts.append(repr(list(tokens)) + repr([bool(m) for m in mask]))
    return "\n".join(parts)


def cache_key(*components: str) -> str:
    text = "\n--\n".join((f"format={CACHE_FORMAT_VERSION}", *components))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_cached(key: str, cache_dir: Path | None = None) -> TokenizedSamples | None:
    """The cached samples for ``key`` (memory-mapped), or None."""
    folder = (cache_dir or default_cache_dir()) / key
    if not (folder / "meta.json").is_file():
        return None
    try:
        os.utime(folder / "meta.json")  # mark as recently used
    except OSError:
        pass
    try:
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r")
            for name in ("tokens", "labels", "offsets")
        }
        return TokenizedSamples(**arrays)
    except (OSError, ValueError):
        return None


def store_cached(
    key: str, samples: TokenizedSamples, meta: dict[str, Any], cache_dir: Path | None = None
) -> Path | None:
    """Write ``samples`` under ``key`` atomically (temp folder + rename); None on failure."""
    root = cache_dir or default_cache_dir()
    folder = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        for name in ("tokens", "labels", "offsets"):
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(samples, name)))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process stored it first
            shutil.rmtree(tmp, ignore_errors=True)
        _evict(root, keep=folder)
        return folder
    except OSError:
        return None


def _evict(root: Path, keep: Path) -> None:
    """Delete least recently used entries while the cache is above its size cap."""
    cap = float(os.environ.get("TUNESMITH_DATA_CACHE_MAX_GB", "20")) * 1024**3
    entries = []
    for folder in root.iterdir():
        meta = folder / "meta.json"
        if folder.name.startswith(".") or not meta.is_file():
            continue
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        entries.append((meta.stat().st_mtime, size, folder))
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries):
        if total <= cap:
            break
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
