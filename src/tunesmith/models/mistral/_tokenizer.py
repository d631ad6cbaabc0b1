"""Mistral tokenizer (SentencePiece) and its ``[INST]`` chat template; the Tekken
(``tokenizer.json``) builders of Mistral Nemo and Mistral Small 3.x."""

from __future__ import annotations

from typing import Any

from tunesmith.data import Message
from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder
from tunesmith.models.llama2._tokenizer import Llama2Tokenizer

__all__ = [
    "MistralChatTemplate",
    "MistralTokenizer",
    "mistral_tokenizer",
    "mistral_nemo_tokenizer",
    "mistral_small_tokenizer",
]

#: Nemo / Small 3.x ship a Tekken ``tokenizer.json`` and their Jinja chat template
mistral_nemo_tokenizer = hf_chat_tokenizer_builder(
    "mistral_nemo_tokenizer", "Mistral Nemo", __name__
)
mistral_small_tokenizer = hf_chat_tokenizer_builder(
    "mistral_small_tokenizer", "Mistral Small 3.x", __name__
)


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


class MistralTokenizer(Llama2Tokenizer):
    """SentencePiece tokenizer with Mistral's turn layout (``<s>`` ... ``</s>`` per turn),
    the same as Llama 2's; the ``[INST]`` markup differs in the prompt template."""


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
