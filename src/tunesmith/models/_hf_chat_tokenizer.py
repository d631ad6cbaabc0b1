"""Tokenizer builders of families that ship a ``tokenizer.json`` and a Jinja chat template.

Gemma 3, SmolLM3, OLMo 2 / 3, Granite 3.3 / 4.0 and gpt-oss checkpoints carry their tokenizer as
``tokenizer.json`` and their prompt format as the ``chat_template`` of
``tokenizer_config.json`` (or a ``chat_template.jinja``); their builders are
:class:`~tunesmith.data.tokenizers.HuggingFaceModelTokenizer` over those files, so prompts are
the official template's rendering token for token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import HuggingFaceModelTokenizer

__all__ = ["hf_chat_tokenizer_builder"]


def _beside(path: Path, name: str, given: str | None) -> str | None:
    if given is not None:
        return given
    candidate = path.parent / name
    return str(candidate) if candidate.is_file() else None


def hf_chat_tokenizer_builder(
    name: str, title: str, module: str
) -> Callable[..., HuggingFaceModelTokenizer]:
    """A ``<name>(path, ...)`` builder: ``path`` is the checkpoint's ``tokenizer.json``;
    ``tokenizer_config.json`` and ``generation_config.json`` beside it are used unless given."""

    def builder(
        path: str,
        tokenizer_config_json_path: str | None = None,
        generation_config_path: str | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
        chat_template: str | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> HuggingFaceModelTokenizer:
        file = Path(path)
        return HuggingFaceModelTokenizer(
            file,
            tokenizer_config_json_path=_beside(
                file, "tokenizer_config.json", tokenizer_config_json_path
            ),
            generation_config_path=_beside(file, "generation_config.json", generation_config_path),
            chat_template=chat_template,
            max_seq_len=max_seq_len,
            truncation_type=truncation_type,
            prompt_template=prompt_template,
            template_kwargs=template_kwargs,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = module
    builder.__doc__ = (
        f"{title} tokenizer from the checkpoint's ``tokenizer.json`` (``path``) and the chat "
        "template of the ``tokenizer_config.json`` beside it (``chat_template`` overrides it; "
        "``template_kwargs`` are extra template variables, e.g. gpt-oss's "
        "``reasoning_effort``)."
    )
    return builder
