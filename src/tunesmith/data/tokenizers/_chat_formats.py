"""Chat formats: how each model family lays out a conversation, as its official template does.

A format turns messages into :class:`Chunk` s: text (with special-token strings such as
``<|im_start|>`` inline) plus the loss mask of that text. Each chunk is one message
(or a BOS/EOS), and every message boundary sits next to a special token, so encoding
chunk by chunk gives exactly the ids of encoding the whole rendered prompt.
``add_end_tokens=False`` leaves the last message open (no end-of-turn), which is the
generation prompt when that message is an empty assistant message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tunesmith.data._messages import Message

__all__ = [
    "Chunk",
    "ChatFormat",
    "Llama3ChatFormat",
    "Llama4ChatFormat",
    "ChatMLFormat",
    "Qwen3ChatFormat",
    "GemmaChatFormat",
    "Phi3ChatFormat",
    "Phi4ChatFormat",
    "InstChatFormat",
    "get_chat_format",
    "message_text",
]

_TOOL_ROLES = ("ipython", "tool")


@dataclass
class Chunk:
    """Text to encode and whether it is masked (excluded from the loss).

    ``continuation``: SentencePiece only — the text continues the previous chunk, so no
    dummy-prefix space is added in front of it.
    """

    text: str
    masked: bool
    continuation: bool = False


class ChatFormat(Protocol):
    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]: ...


def message_text(message: Message, image_token: str | None = None, strip: bool = False) -> str:
    """A message's content as one string; image parts become ``image_token``."""
    parts = []
    for part in message.content:
        if part["type"] == "text":
            parts.append(part["content"])
        elif image_token is None:
            raise ValueError(
                "this tokenizer's chat format has no image token, so messages with image "
                "content cannot be tokenized; use a multimodal model's tokenizer"
            )
        else:
            parts.append(image_token)
    text = "".join(parts)
    return text.strip() if strip else text


def _ends(i: int, n: int, add_end_tokens: bool) -> bool:
    return i < n - 1 or add_end_tokens


def _check_roles(messages: list[Message], allowed: tuple[str, ...], family: str) -> None:
    for i, m in enumerate(messages):
        if m.role not in allowed:
            raise ValueError(
                f"message {i} has role {m.role!r}, which {family}'s chat format does not "
                f"support (supported: {list(allowed)})"
            )


class Llama3ChatFormat:
    """Llama 3.x: ``<|begin_of_text|>`` then ``<|start_header_id|>{role}<|end_header_id|>\n\n``
    + trimmed content + ``<|eot_id|>`` (``<|eom_id|>`` when ``eot=False``); tool calls start
    with ``<|python_tag|>``; tool results use the ``ipython`` role.

    ``system_preamble`` (Llama 3.1+: ``"Cutting Knowledge Date: ...\nToday Date: ...\n\n"``)
    goes before the trimmed system content, and a system message holding only the preamble
    is inserted (masked) when the conversation has none, as the official template does.
    """

    def __init__(self, image_token: str | None = "<|image|>", system_preamble: str | None = None):
        self.image_token = image_token
        self.system_preamble = system_preamble

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        chunks = [Chunk("<|begin_of_text|>", True)]
        if self.system_preamble is not None and (not messages or messages[0].role != "system"):
            text = "<|start_header_id|>system<|end_header_id|>\n\n"
            chunks.append(Chunk(text + self.system_preamble + "<|eot_id|>", True))
        n = len(messages)
        for i, m in enumerate(messages):
            role = "ipython" if m.role in _TOOL_ROLES else m.role
            text = f"<|start_header_id|>{role}<|end_header_id|>\n\n"
            if m.ipython:
                text += "<|python_tag|>"
            if i == 0 and m.role == "system" and self.system_preamble is not None:
                text += self.system_preamble
            text += message_text(m, self.image_token, strip=True)
            if _ends(i, n, add_end_tokens):
                text += "<|eot_id|>" if m.eot else "<|eom_id|>"
            chunks.append(Chunk(text, m.masked))
        return chunks


class Llama4ChatFormat:
    """Llama 4, as its official template (transformers' ``processing_llama4``): ``<|begin_of_text|>``
    then ``<|header_start|>{role}<|header_end|>\n\n`` + content + ``<|eot|>`` (``<|eom|>``
    when ``eot=False``); only a leading system message is trimmed; image parts become
    ``<|image|>`` (the transform expands each to its tile grid); tool results use the
    ``ipython`` role. Tool calls are refused (the official template renders them).
    """

    image_token = "<|image|>"

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        chunks = [Chunk("<|begin_of_text|>", True)]
        n = len(messages)
        for i, m in enumerate(messages):
            if m.ipython and m.role == "assistant":
                raise ValueError(
                    f"message {i}: Llama 4 tool calls are rendered by the official template "
                    "only; tokenize tool-use data with HuggingFaceModelTokenizer"
                )
            role = "ipython" if m.role in _TOOL_ROLES else m.role
            body = message_text(m, self.image_token, strip=i == 0 and m.role == "system")
            text = f"<|header_start|>{role}<|header_end|>\n\n{body}"
            if _ends(i, n, add_end_tokens):
                text += "<|eot|>" if m.eot else "<|eom|>"
            chunks.append(Chunk(text, m.masked))
        return chunks


class ChatMLFormat:
    """ChatML as Qwen2/Qwen2.5/SmolLM2 render it: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.

    ``default_system_prompt`` is inserted (masked) when the conversation has no system
    message, as the official Qwen2.5 and SmolLM2 templates do. Tool calls are wrapped in
    ``<tool_call>``; consecutive tool results share one ``user`` turn of
    ``<tool_response>`` blocks (Qwen's convention).
    """

    def __init__(self, default_system_prompt: str | None = None, image_token: str | None = None):
        self.default_system_prompt = default_system_prompt
        self.image_token = image_token

    def _system_chunks(self, messages: list[Message]) -> list[Chunk]:
        if self.default_system_prompt is None or (messages and messages[0].role == "system"):
            return []
        return [Chunk(f"<|im_start|>system\n{self.default_system_prompt}<|im_end|>\n", True)]

    def _tool_result(self, messages: list[Message], i: int, end: str) -> str:
        prev_tool = i > 0 and messages[i - 1].role in _TOOL_ROLES
        next_tool = i < len(messages) - 1 and messages[i + 1].role in _TOOL_ROLES
        text = "" if prev_tool else "<|im_start|>user"
        text += (
            f"\n<tool_response>\n{message_text(messages[i], self.image_token)}\n</tool_response>"
        )
        return text + ("" if next_tool else end)

    def _assistant(self, messages: list[Message], i: int, add_end_tokens: bool) -> str:
        m = messages[i]
        if m.ipython:
            return f"<|im_start|>assistant\n<tool_call>\n{message_text(m)}\n</tool_call>"
        return f"<|im_start|>assistant\n{message_text(m, self.image_token)}"

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        chunks = self._system_chunks(messages)
        n = len(messages)
        for i, m in enumerate(messages):
            end = "<|im_end|>\n" if _ends(i, n, add_end_tokens) else ""
            if m.role in _TOOL_ROLES:
                text = self._tool_result(messages, i, end)
            elif m.role == "assistant":
                text = self._assistant(messages, i, add_end_tokens) + end
            else:
                text = f"<|im_start|>{m.role}\n{message_text(m, self.image_token)}{end}"
            chunks.append(Chunk(text, m.masked))
        return chunks


class Qwen3ChatFormat(ChatMLFormat):
    """Qwen3: ChatML, and assistant turns after the last user query carry a think block.

    As the official template renders a plain conversation: the final assistant message
    becomes ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (an empty block when the
    content has no ``<think>...</think>``); earlier turns keep only the answer. An open
    final assistant message (``add_end_tokens=False``, empty) is the generation prompt
    ``<|im_start|>assistant\\n`` (thinking enabled, the template's default); with
    ``enable_thinking=False`` it is followed by an empty ``<think>\\n\\n</think>\\n\\n``, as
    the template's non-thinking switch renders it.
    """

    def __init__(self, enable_thinking: bool = True) -> None:
        super().__init__(default_system_prompt=None)
        self.enable_thinking = enable_thinking

    @staticmethod
    def _last_query_index(messages: list[Message]) -> int:
        """Index of the last user message that is not a tool response (the template's rule)."""
        for idx in range(len(messages) - 1, -1, -1):
            if messages[idx].role == "user":
                text = message_text(messages[idx])
                if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
                    return idx
        return len(messages) - 1

    def _assistant(self, messages: list[Message], i: int, add_end_tokens: bool) -> str:
        m = messages[i]
        content = message_text(m, self.image_token)
        is_last = i == len(messages) - 1
        if is_last and not add_end_tokens and not content:
            empty = "" if self.enable_thinking else "<think>\n\n</think>\n\n"
            return "<|im_start|>assistant\n" + empty
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
        if m.ipython:
            content = f"<tool_call>\n{content}\n</tool_call>"
        if i > self._last_query_index(messages) and (is_last or reasoning):
            think, answer = reasoning.strip("\n"), content.lstrip("\n")
            return f"<|im_start|>assistant\n<think>\n{think}\n</think>\n\n{answer}"
        return f"<|im_start|>assistant\n{content}"


class GemmaChatFormat:
    """Gemma / Gemma 2: ``<bos><start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n...``.

    Gemma has no system role: a leading system message is put before the first user
    message's text followed by a blank line (the convention of Gemma 3's official
    template). Content is trimmed, as in the official template.
    """

    def __init__(self, bos: str = "<bos>", image_token: str | None = None):
        self.bos = bos
        self.image_token = image_token

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        _check_roles(messages, ("system", "user", "assistant"), "Gemma")
        chunks = [Chunk(self.bos, True)]
        n = len(messages)
        system = ""
        for i, m in enumerate(messages):
            if m.role == "system":
                if i != 0:
                    raise ValueError(f"message {i}: Gemma accepts a system message only first")
                system = message_text(m) + "\n\n"
                continue
            role = "model" if m.role == "assistant" else "user"
            text = message_text(m, self.image_token, strip=True)
            if role == "user" and system:
                text, system = system + text, ""
            end = "<end_of_turn>\n" if _ends(i, n, add_end_tokens) else ""
            chunks.append(Chunk(f"<start_of_turn>{role}\n{text}{end}", m.masked))
        return chunks


class Phi3ChatFormat:
    """Phi-3 / Phi-3.5: ``<|{role}|>\\n{content}<|end|>\\n`` per message and
    ``<|endoftext|>`` after a complete conversation (official template; no BOS)."""

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        _check_roles(messages, ("system", "user", "assistant"), "Phi-3")
        chunks = []
        n = len(messages)
        for i, m in enumerate(messages):
            text = message_text(m)
            if m.role == "system" and not text:
                continue
            end = "<|end|>\n" if _ends(i, n, add_end_tokens) else ""
            chunks.append(Chunk(f"<|{m.role}|>\n{text}{end}", m.masked))
        if add_end_tokens:
            chunks.append(Chunk("<|endoftext|>", True))
        return chunks


class Phi4ChatFormat:
    """Phi-4: ``<|im_start|>{role}<|im_sep|>{content}<|im_end|>`` (no newlines, no BOS)."""

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        _check_roles(messages, ("system", "user", "assistant"), "Phi-4")
        n = len(messages)
        return [
            Chunk(
                f"<|im_start|>{m.role}<|im_sep|>{message_text(m)}"
                + ("<|im_end|>" if _ends(i, n, add_end_tokens) else ""),
                m.masked,
            )
            for i, m in enumerate(messages)
        ]


class InstChatFormat:
    """Llama 2 / Mistral (SentencePiece): BOS + turn text + EOS after each assistant message.

    The ``[INST]`` markup comes from the prompt template (``Llama2ChatTemplate``,
    ``MistralChatTemplate``). Messages inside a turn are joined as one text would be:
    trailing spaces are dropped and the next message continues without the
    SentencePiece dummy-prefix space unless the previous text ended with a space
    (torchtune's rule, which reproduces Meta's ``encode("[INST] q [/INST] a")``).
    """

    def __init__(self, bos: str = "<s>", eos: str = "</s>", image_token: str | None = None):
        self.bos, self.eos, self.image_token = bos, eos, image_token

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        chunks: list[Chunk] = []
        start_of_turn, prev_ends_with_space = True, False
        n = len(messages)
        for i, m in enumerate(messages):
            if start_of_turn:
                chunks.append(Chunk(self.bos, True))
            text = message_text(m, self.image_token)
            continuation = not start_of_turn and not prev_ends_with_space
            prev_ends_with_space = text.endswith(" ")
            chunks.append(Chunk(text.rstrip(" "), m.masked, continuation=continuation))
            start_of_turn = m.role == "assistant"
            if m.role == "assistant" and _ends(i, n, add_end_tokens):
                chunks.append(Chunk(self.eos, m.masked))
        return chunks


_FORMATS = {
    "llama4": Llama4ChatFormat,
    "llama3": Llama3ChatFormat,
    "chatml": ChatMLFormat,
    "qwen3": Qwen3ChatFormat,
    "gemma": GemmaChatFormat,
    "phi3": Phi3ChatFormat,
    "phi4": Phi4ChatFormat,
    "inst": InstChatFormat,
}


def get_chat_format(name: str, **kwargs: object) -> ChatFormat:
    """A chat format by name: ``llama3``, ``chatml``, ``qwen3``, ``gemma``, ``phi3``, ``phi4``,
    ``inst`` (Llama 2 / Mistral); ``kwargs`` go to its constructor."""
    try:
        cls = _FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown chat format {name!r}; choose one of {sorted(_FORMATS)}"
        ) from None
    return cls(**kwargs)  # type: ignore[arg-type]
