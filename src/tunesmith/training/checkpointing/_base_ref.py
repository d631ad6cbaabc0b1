"""What a saved PEFT adapter names as its base: something ``from_pretrained`` can load.

``adapter_config.json``'s ``base_model_name_or_path`` (and ``revision``) is what
``peft.AutoPeftModelForCausalLM.from_pretrained(adapter_folder)`` loads the base from, so
it must be a Hugging Face repo id or a folder with ``config.json`` and the weights, never a
single file such as a ``.gguf``. In order of preference:

1. the ``repo_id`` / ``revision`` of the ``.tunesmith-manifest.json`` that ``tunesmith
   download`` wrote into the base folder (the files are verified copies of that revision);
2. ``_name_or_path`` of the base's ``config.json`` when it is a repo id (``owner/name``, not
   a local path);
3. the base folder's absolute path (its parent's, for the ``original/`` sub-folder of
   Meta weights beside a Hugging Face ``config.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.utils._integrity import MANIFEST_NAME

__all__ = ["base_model_reference", "looks_like_repo_id"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def looks_like_repo_id(text: object) -> bool:
    """True for ``owner/name`` that is not also an existing local path or a file name."""
    if not isinstance(text, str) or not _REPO_ID.match(text) or ".." in text:
        return False
    return not text.endswith((".gguf", ".safetensors", ".bin", ".pt", ".pth", ".json")) and (
        not Path(text).exists()
    )


def base_model_reference(
    folder: str | Path, hf_config: Mapping[str, Any] | None = None
) -> tuple[str, str | None]:
    """``(base_model_name_or_path, revision or None)`` for a base model in ``folder``."""
    folder = Path(folder).expanduser().resolve()
    # Meta weights of a Hugging Face download sit in its original/ sub-folder: the parent
    # holds the manifest and config.json
    for place in (folder, folder.parent):
        manifest = place / MANIFEST_NAME
        if not manifest.is_file():
            continue
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            data = {}
        repo_id = data.get("repo_id") if isinstance(data, dict) else None
        if looks_like_repo_id(repo_id):
            revision = data.get("revision")
            return str(repo_id), str(revision) if isinstance(revision, str) else None
    name = (hf_config or {}).get("_name_or_path")
    if looks_like_repo_id(name):
        return str(name), None
    if not (folder / "config.json").is_file() and (folder.parent / "config.json").is_file():
        return str(folder.parent), None
    return str(folder), None
