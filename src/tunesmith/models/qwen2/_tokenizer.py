"""The Qwen tokenizer (Qwen2, Qwen2.5, Qwen3): byte-level BPE from vocab.json + merges.txt,
ChatML chat layout.

One implementation, :class:`Qwen2Tokenizer`; a family is data, a :class:`QwenTokenizerFamily`
(added tokens, EOS, default system prompt, which official template lays the chat out). The
Qwen2.5 and Qwen3 classes (``qwen2_5/_tokenizer.py``, ``qwen3/_tokenizer.py``) only name
their family, and every family's builder comes from :func:`qwen_tokenizer_builder`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tunesmith.data.tokenizers import (
    ByteLevelBPEBaseTokenizer,
    ChatMLFormat,
    ChatModelTokenizer,
    Qwen3ChatFormat,
    load_special_tokens,
)

__all__ = [
    "QWEN2_SPECIAL_TOKENS",
    "QWEN2_DEFAULT_SYSTEM_PROMPT",
    "Qwen2Tokenizer",
    "qwen2_tokenizer",
]

QWEN2_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
}
QWEN2_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class QwenTokenizerFamily:
    """What one Qwen family's tokenizer is, as data.

    Attributes:
        name: the model's name in errors (``"Qwen2.5"``).
        special_tokens: the added ``{token: id}`` used when none are given.
        eos_token: the EOS used when none is given.
        default_system_prompt: inserted (masked) when a conversation has no system message,
            as the official template does; ``None``: the template inserts none.
        tools: the template renders tool schemas and ``tool_calls`` (Qwen2.5's layout).
        thinking: the template is Qwen3's (``<think>`` blocks, the ``enable_thinking`` switch).
    """

    name: str
    special_tokens: Mapping[str, int]
    eos_token: str
    default_system_prompt: str | None
    tools: bool = False
    thinking: bool = False

    def chat_format(self, default_system_prompt: str | None, enable_thinking: bool) -> Any:
        """The family's official chat layout."""
        if self.thinking:
            return Qwen3ChatFormat(enable_thinking=enable_thinking)
        return ChatMLFormat(default_system_prompt, tools=self.tools, family=self.name)


QWEN2 = QwenTokenizerFamily(
    "Qwen2", QWEN2_SPECIAL_TOKENS, "<|endoftext|>", QWEN2_DEFAULT_SYSTEM_PROMPT
)


class _FamilyDefault:
    """The default of an argument whose value comes from the tokenizer's family."""

    def __repr__(self) -> str:
        return "<the family's>"


FAMILY_DEFAULT: Any = _FamilyDefault()


class Qwen2Tokenizer(ChatModelTokenizer):
    """Qwen-family tokenizer (torchtune's arguments), laid out as the official template does.

    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; when the conversation has
    no system message, ``default_system_prompt`` is inserted (masked) as the official
    template does (``None`` inserts nothing). No BOS. A subclass names its
    :class:`QwenTokenizerFamily` in ``family``; Qwen2's is EOS ``<|endoftext|>``, default
    system prompt ``"You are a helpful assistant."``, no tool rendering.

    Args:
        path: ``vocab.json``.
        merges_file: ``merges.txt``.
        special_tokens: ``{token: id}`` added tokens (default: the family's).
        max_seq_len, prompt_template, truncation_type: see :class:`ChatModelTokenizer`.
        eos_token, pad_token, bos_token: token strings (``bos_token=None``: no BOS;
            ``eos_token`` defaults to the family's).
        default_system_prompt: see above (default: the family's).
        enable_thinking: Qwen3's non-thinking switch (``False``: the generation prompt ends
            with an empty think block); only Qwen3's template has it.
        chat_format: override the layout (the VL transforms pass their own).
        errors, unk_token, bpe_cache_size: accepted for torchtune compatibility (the
            ``tokenizers`` library decodes with replacement and manages its own cache).
    """

    family: ClassVar[QwenTokenizerFamily] = QWEN2

    def __init__(
        self,
        path: str | Path,
        merges_file: str | Path,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        *,
        prompt_template: Any = None,
        errors: str = "replace",
        unk_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = "<|endoftext|>",
        bpe_cache_size: int = 151646,
        truncation_type: str = "right",
        default_system_prompt: str | None = FAMILY_DEFAULT,
        enable_thinking: bool = True,
        chat_format: Any = None,
    ):
        family = self.family
        if not enable_thinking and not family.thinking:
            raise ValueError(
                f"enable_thinking=False: {family.name}'s template has no thinking switch "
                "(Qwen3's has); drop the argument"
            )
        specials = dict(special_tokens if special_tokens is not None else family.special_tokens)
        eos_token = family.eos_token if eos_token is None else eos_token
        for name, token in (
            ("eos_token", eos_token),
            ("pad_token", pad_token),
            ("bos_token", bos_token),
        ):
            if token is not None and token not in specials:
                raise ValueError(f"{name}={token!r} is not one of the special tokens")
        if default_system_prompt is FAMILY_DEFAULT:
            default_system_prompt = family.default_system_prompt
        base = ByteLevelBPEBaseTokenizer(path, merges_file)
        self.im_start_id = specials["<|im_start|>"]
        self.im_end_id = specials["<|im_end|>"]
        eos_id = specials[eos_token]
        endoftext = specials.get("<|endoftext|>", eos_id)
        if chat_format is None:
            chat_format = family.chat_format(default_system_prompt, enable_thinking)
        super().__init__(
            base,
            specials,
            chat_format,
            bos_id=specials[bos_token] if bos_token is not None else None,
            eos_id=eos_id,
            pad_id=specials[pad_token] if pad_token is not None else None,
            stop_tokens=sorted({eos_id, self.im_end_id, endoftext}),
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def qwen_tokenizer_builder(
    cls: type[Qwen2Tokenizer], name: str, module: str
) -> Callable[..., Qwen2Tokenizer]:
    """The ``<name>(path, merges_file, special_tokens_path=None, ...)`` builder of ``cls``
    (torchtune's arguments; ``kwargs`` go to ``cls``)."""

    def builder(
        path: str,
        merges_file: str,
        special_tokens_path: str | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
        **kwargs: Any,
    ) -> Qwen2Tokenizer:
        special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
        return cls(
            path,
            merges_file,
            special_tokens=special_tokens,
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
            **kwargs,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = module
    builder.__doc__ = (
        f"{cls.family.name} tokenizer from ``vocab.json`` + ``merges.txt`` (``special_tokens_path``: "
        f"a ``{{token: id}}`` JSON or a ``tokenizer.json``); ``kwargs`` go to :class:`{cls.__name__}`."
    )
    return builder


qwen2_tokenizer = qwen_tokenizer_builder(Qwen2Tokenizer, "qwen2_tokenizer", __name__)
