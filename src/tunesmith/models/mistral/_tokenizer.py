"""Mistral tokenizer (SentencePiece) and its ``[INST]`` chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data import Message
from tunesmith.data.tokenizers import ChatModelTokenizer, InstChatFormat, SentencePieceBaseTokenizer
from tunesmith.models.llama2._tokenizer import sentencepiece_special_tokens

__all__ = ["MistralChatTemplate", "MistralTokenizer", "mistral_tokenizer"]


class MistralChatTemplate:
    """Mistral instruct: ``[INST] {user} [/INST] {assistant}``; Mistral has no system role."""

    template = {
        "system": None,
        "user": ("[INST] ", " [/INST] "),
        "assistant": ("", ""),
        "ipython": ("", ""),
    }

    def __call__(self, messages: list[Message], inference: bool = False) -> list[Message]:
        out = []
        for i, message in enumerate(messages):
            if message.role == "system":
                raise ValueError(
                    f"message {i}: MistralChatTemplate does not support system prompts; drop "
                    "the system message or set prompt_template to another template"
                )
            pre, post = self.template.get(message.role) or ("", "")
            content = list(message.content)
            if pre:
                content.insert(0, {"type": "text", "content": pre})
            if post:
                content.append({"type": "text", "content": post})
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


class MistralTokenizer(ChatModelTokenizer):
    """SentencePiece tokenizer with Mistral's turn layout (``<s>`` ... ``</s>`` per turn)."""

    def __init__(
        self,
        path: str | Path,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ):
        base = SentencePieceBaseTokenizer(path)
        bos = base.spm_model.id_to_piece(base.bos_id)
        eos = base.spm_model.id_to_piece(base.eos_id)
        super().__init__(
            base,
            sentencepiece_special_tokens(base),
            InstChatFormat(bos=bos, eos=eos),
            bos_id=base.bos_id,
            eos_id=base.eos_id,
            pad_id=base.pad_id if base.pad_id >= 0 else 0,
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def mistral_tokenizer(
    path: str,
    max_seq_len: int | None = None,
    prompt_template: Any = "tunesmith.models.mistral.MistralChatTemplate",
    truncation_type: str = "right",
) -> MistralTokenizer:
    """Mistral tokenizer from its SentencePiece ``tokenizer.model`` (torchtune's arguments)."""
    return MistralTokenizer(
        path,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
    )
