"""Llama 2 tokenizer (SentencePiece) and its ``[INST]`` chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data import Message
from tunesmith.data.tokenizers import ChatModelTokenizer, InstChatFormat, SentencePieceBaseTokenizer

__all__ = [
    "Llama2ChatTemplate",
    "Llama2Tokenizer",
    "llama2_tokenizer",
    "sentencepiece_special_tokens",
]


def sentencepiece_special_tokens(base: SentencePieceBaseTokenizer) -> dict[str, int]:
    """``{piece: id}`` of a SentencePiece model's unk/bos/eos/pad pieces that exist."""
    out = {}
    for idx in (base.spm_model.unk_id(), base.bos_id, base.eos_id, base.pad_id):
        if 0 <= idx < base.vocab_size:
            out[base.spm_model.id_to_piece(idx)] = idx
    return out


class Llama2ChatTemplate:
    """Llama 2 chat: ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant}``.

    The system prompt is folded into the first user message, as Meta's reference code does.
    """

    template = {
        "system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
        "user": ("[INST] ", " [/INST] "),
        "assistant": ("", ""),
        "ipython": ("", ""),
    }

    def __call__(self, messages: list[Message], inference: bool = False) -> list[Message]:
        system: list[dict[str, Any]] = []
        out = []
        for message in messages:
            if message.role == "system":
                pre, post = self.template["system"]
                system = [{"type": "text", "content": pre}, *message.content]
                system.append({"type": "text", "content": post})
                continue
            content = list(message.content)
            if message.role == "user":
                pre, post = self.template["user"]
                content = [{"type": "text", "content": pre}, *system, *content]
                content.append({"type": "text", "content": post})
                system = []
            out.append(
                Message(
                    role=message.role,
                    content=content,
                    masked=message.masked,
                    ipython=message.ipython,
                    eot=message.eot,
                )
            )
        return out


class Llama2Tokenizer(ChatModelTokenizer):
    """SentencePiece tokenizer with Llama 2's turn layout: ``<s>`` + turn text + ``</s>``
    after each assistant message (``[INST]`` markup comes from the prompt template)."""

    def __init__(
        self,
        path: str | Path,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ):
        base = SentencePieceBaseTokenizer(path)
        specials = sentencepiece_special_tokens(base)
        bos = base.spm_model.id_to_piece(base.bos_id)
        eos = base.spm_model.id_to_piece(base.eos_id)
        super().__init__(
            base,
            specials,
            InstChatFormat(bos=bos, eos=eos),
            bos_id=base.bos_id,
            eos_id=base.eos_id,
            pad_id=base.pad_id if base.pad_id >= 0 else 0,
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def llama2_tokenizer(
    path: str,
    max_seq_len: int | None = None,
    prompt_template: Any = "tunesmith.models.llama2.Llama2ChatTemplate",
    truncation_type: str = "right",
) -> Llama2Tokenizer:
    """Llama 2 tokenizer from its SentencePiece ``tokenizer.model`` (torchtune's arguments)."""
    return Llama2Tokenizer(
        path,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
    )
