"""Downloaded files checked against what the hub reports, and the download manifest.

The hub reports each file twice: its file listing (``list_repo_tree``: ``size``, the git
``blob_id`` and, for LFS files, ``lfs.sha256``) and the headers of the download itself
(``ETag``: the git blob sha1 of a regular file, ``X-Linked-Etag`` = the sha256 of an LFS
file, ``X-Linked-Size``), which ``huggingface_hub`` keeps in
``<local_dir>/.cache/huggingface/download/<file>.metadata``. A file is accepted when its
size and hash agree with both: sha256 for LFS files, the git blob sha1
(``sha1(b"blob <size>\\0" + content)``) for regular ones.

After a verified download ``.tunesmith-manifest.json`` is written into the folder::

    {"repo_id": "owner/name", "revision": "<commit sha>",
     "files": {"<relpath>": {"size": int, "sha256": str | None, "git_sha1": str | None}}}

(``sha256`` is the hub's for LFS files and computed for verified regular files;
``git_sha1`` is set for regular files only). Checkpointers verify weight files against it
when loading (:func:`tunesmith.utils._integrity.verify_manifest`) and name its ``repo_id``
as a saved adapter's base.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.utils._atomic import atomic_write_json
from tunesmith.utils._integrity import MANIFEST_NAME

__all__ = [
    "MANIFEST_NAME",
    "HubFile",
    "file_hashes",
    "file_problem",
    "hub_files",
    "remove_download",
    "write_manifest",
]

_CHUNK = 8 << 20


@dataclass(frozen=True)
class HubFile:
    """One file as the hub lists it: ``sha256`` for LFS files, ``git_sha1`` for regular ones."""

    path: str
    size: int
    sha256: str | None
    git_sha1: str | None


def hub_files(
    api: Any,
    repo_id: str,
    revision: str,
    allow_patterns: Sequence[str] | str | None = None,
    ignore_patterns: Sequence[str] | str | None = None,
) -> list[HubFile]:
    """The files of ``repo_id`` at ``revision`` that ``snapshot_download`` fetches with the
    same patterns, with the sizes and hashes the hub's file listing reports."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    entries = [
        e
        for e in api.list_repo_tree(repo_id, revision=revision, recursive=True)
        if isinstance(e, RepoFile)
    ]
    kept = set(
        filter_repo_objects(
            [e.path for e in entries],
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
        )
    )
    out = []
    for e in entries:
        if e.path not in kept:
            continue
        if e.lfs is not None:
            out.append(HubFile(e.path, int(e.lfs.size), str(e.lfs.sha256).lower(), None))
        else:
            out.append(HubFile(e.path, int(e.size), None, str(e.blob_id).lower()))
    return sorted(out, key=lambda f: f.path)


def file_hashes(path: Path) -> tuple[str, str]:
    """``(sha256, git blob sha1)`` of a file, read once in 8 MiB chunks."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def _recorded_etag(local_dir: Path, name: str) -> str | None:
    """The ETag of the download that wrote ``name`` (huggingface_hub's local metadata)."""
    from huggingface_hub._local_folder import read_download_metadata

    try:
        meta = read_download_metadata(local_dir, name)
    except Exception:  # an unreadable metadata file only loses this second opinion
        return None
    etag = getattr(meta, "etag", None) if meta is not None else None
    return str(etag).strip('"').lower().removeprefix("w/").strip('"') if etag else None


def file_problem(local_dir: Path, expected: HubFile) -> tuple[str, str | None]:
    """``(problem, sha256)``: problem is ``""`` when the local copy matches the hub, else
    ``"<what>: expected <x>, got <y>"``; sha256 is the file's (None when not computed)."""
    path = local_dir / expected.path
    if not path.is_file():
        return "missing after the download", None
    size = path.stat().st_size
    if size != expected.size:
        return f"size: expected {expected.size} bytes, got {size}", None
    sha256, git_sha1 = file_hashes(path)
    if expected.sha256 is not None and sha256 != expected.sha256:
        return f"sha256: expected {expected.sha256}, got {sha256}", sha256
    if expected.git_sha1 is not None and git_sha1 != expected.git_sha1:
        return f"git sha1: expected {expected.git_sha1}, got {git_sha1}", sha256
    etag = _recorded_etag(local_dir, expected.path)
    got = sha256 if expected.sha256 is not None else git_sha1
    if etag and len(etag) == len(got) and etag != got:
        return f"ETag: the hub sent {etag}, the file hashes to {got}", sha256
    return "", sha256


def remove_download(local_dir: Path, name: str) -> None:
    """Delete a file and huggingface_hub's record of it, so the next download refetches it."""
    from huggingface_hub._local_folder import get_local_download_paths

    (local_dir / name).unlink(missing_ok=True)
    try:
        get_local_download_paths(local_dir, name).metadata_path.unlink(missing_ok=True)
    except OSError:
        pass


def write_manifest(
    local_dir: Path, repo_id: str, revision: str, files: Iterable[tuple[HubFile, str | None]]
) -> Path:
    """Write ``.tunesmith-manifest.json`` (see the module doc) atomically; entries of an
    earlier manifest for the same repo and revision whose files are still there are kept."""
    path = local_dir / MANIFEST_NAME
    entries: dict[str, dict[str, Any]] = {}
    try:
        old = json.loads(path.read_text())
        if old.get("repo_id") == repo_id and old.get("revision") == revision:
            entries = {
                k: v
                for k, v in dict(old.get("files", {})).items()
                if (local_dir / k).is_file() and (local_dir / k).stat().st_size == v.get("size")
            }
    except (OSError, ValueError, AttributeError):
        pass
    for hub, sha256 in files:
        entries[hub.path] = {
            "size": hub.size,
            "sha256": hub.sha256 or sha256,
            "git_sha1": hub.git_sha1,
        }
    manifest = {"files": dict(sorted(entries.items())), "repo_id": repo_id, "revision": revision}
    atomic_write_json(path, manifest)
    return path
