"""The prompt format and stop tokens a model was trained with, written beside its weights.

A saved Hugging Face folder must answer with the template and stop at the tokens the run
used, wherever it is served (transformers, a GGUF export, the Hub). The recipe records them
from its tokenizer (:func:`serving_info`, set as ``checkpointer.serving``); every HF save
then writes (:func:`write_serving_files`):

* the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
  ``special_tokens_map.json``, ...) from the tokenizer's own folder when the checkpoint's
  folder had none to copy;
* ``chat_template.jinja`` with the Jinja template the run rendered (Hugging Face tokenizers;
  transformers prefers this file to ``tokenizer_config.json``'s ``chat_template``), so a
  template given in the config reaches the saved folder too;
* ``generation_config.json`` whose ``eos_token_id`` lists the model's EOS ids and every
  stop token of the training tokenizer (e.g. Llama 3's ``<|eot_id|>`` on a base model
  whose config names only ``<|end_of_text|>``), so generation stops where training ended.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.utils._atomic import atomic_copy, atomic_write_bytes, atomic_write_json

__all__ = ["TOKENIZER_FILES", "serving_info", "write_serving_files"]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)

_HF_FILES = ("tokenizer.json", "tokenizer_config.json")


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list | tuple) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _tokenizer_dirs(node: Mapping[str, Any] | None) -> list[Path]:
    """Folders the tokenizer was read from (its ``*path*`` arguments), nearest first; a
    ``original/tokenizer.model`` also names the folder above (torchtune's layout)."""
    dirs: list[Path] = []
    for key, value in (node or {}).items():
        if "path" not in str(key) or not isinstance(value, str | os.PathLike):
            continue
        path = Path(value).expanduser()
        folder = path if path.is_dir() else path.parent
        for d in (folder, folder.parent if folder.name == "original" else None):
            if d is not None and d.is_dir() and d not in dirs:
                dirs.append(d)
    return dirs


def serving_info(tokenizer: Any, node: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a saved folder must carry from the training ``tokenizer`` (``node``: its config):
    ``{"chat_template": str | None, "stop_token_ids": [int], "eos_id", "bos_id", "pad_id",
    "tokenizer_dirs": [Path]}``."""
    template = getattr(tokenizer, "chat_template", None)
    eos = getattr(tokenizer, "eos_id", None)
    stops = _ids(list(getattr(tokenizer, "stop_tokens", None) or []))
    stops = list(dict.fromkeys([*_ids(eos), *stops]))
    return {
        "chat_template": template if isinstance(template, str) and template else None,
        "stop_token_ids": stops,
        "eos_id": eos if isinstance(eos, int) else None,
        "bos_id": getattr(tokenizer, "bos_id", None),
        "pad_id": getattr(tokenizer, "pad_id", None),
        "tokenizer_dirs": _tokenizer_dirs(node),
    }


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_serving_files(folder: str | os.PathLike[str], info: Mapping[str, Any] | None) -> None:
    """Write the tokenizer files, ``chat_template.jinja`` and ``generation_config.json`` of
    ``info`` (from :func:`serving_info`) into the HF checkpoint ``folder`` (see the module
    doc). Files the checkpoint's own folder provided are kept unless they disagree with
    training (the template, the stop ids)."""
    if not info:
        return
    folder = Path(folder)
    if not any((folder / n).is_file() for n in TOKENIZER_FILES[:4]):
        sources = [
            [d / n for n in TOKENIZER_FILES if (d / n).is_file()]
            for d in info.get("tokenizer_dirs") or []
        ]
        # the nearest folder with Hugging Face tokenizer files, else the nearest with any
        hf = [s for s in sources if any(f.name in _HF_FILES for f in s)]
        for f in (hf or [s for s in sources if s] or [[]])[0]:
            atomic_copy(f, folder / f.name)
    template = info.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template and (not jinja.is_file() or jinja.read_text(encoding="utf-8") != template):
        atomic_write_bytes(jinja, template.encode("utf-8"))
    stops = _ids(list(info.get("stop_token_ids") or []))
    if not stops or not (folder / "config.json").is_file():
        return
    gen_path = folder / "generation_config.json"
    gen = _read_json(gen_path)
    config = _read_json(folder / "config.json")
    if not gen:
        gen = {k: config[k] for k in ("bos_token_id", "pad_token_id") if k in config}
        gen["_from_model_config"] = True
    if gen.get("bos_token_id") is None and info.get("bos_id") is not None:
        gen["bos_token_id"] = int(info["bos_id"])
    eos = list(dict.fromkeys([*_ids(gen.get("eos_token_id", config.get("eos_token_id"))), *stops]))
    updated = {**gen, "eos_token_id": eos[0] if len(eos) == 1 else eos}
    if updated != _read_json(gen_path):
        atomic_write_json(gen_path, updated)
