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
from typing import Any, Protocol

from tunesmith.data._messages import Message
from tunesmith.data.tokenizers._chat_tools import (
    llama3_tool_call,
    llama3_tools_prompt,
    qwen_tool_call,
    qwen_tools_block,
    split_think,
    tojson,
)

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
    ``source``: the message the chunk renders (its ``mask_reasoning`` is applied to the
    chunk's tokens by the tokenizer).
    """

    text: str
    masked: bool
    continuation: bool = False
    source: Message | None = None


class ChatFormat(Protocol):
    """``render(messages, add_end_tokens)``; a format whose ``renders_tools`` is True also
    takes ``tools=`` (the row's function schemas). ``family`` names it in errors."""

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
    + trimmed content + ``<|eot_id|>`` (``<|eom_id|>`` when ``eot=False``); torchtune's
    ``ipython`` messages start with ``<|python_tag|>`` / are tool results as they are.

    ``system_preamble`` (Llama 3.1+: ``"Cutting Knowledge Date: ...\nToday Date: ...\n\n"``)
    goes before the trimmed system content, and a system message holding only the preamble
    is inserted (masked) when the conversation has none, as the official template does.

    Tools as Llama 3.1/3.2/3.3's official template renders them (``tools`` given: the
    system message starts with ``Environment: ipython``, the schemas go into the first user
    message, see ``_chat_tools``): an assistant message with ``tool_calls`` is its single
    call as JSON (its content is not rendered), a ``tool`` message is an ``ipython`` turn
    whose content is written as a JSON string. ``reasoning`` is not rendered (the template
    has no reasoning).
    """

    family = "Llama 3"
    renders_tools = True

    def __init__(self, image_token: str | None = "<|image|>", system_preamble: str | None = None):
        self.image_token = image_token
        self.system_preamble = system_preamble

    def _message_text(self, m: Message, i: int) -> str:
        if m.tool_calls:
            return _LLAMA3_HEADER.format("assistant") + llama3_tool_call(m, i)
        if m.role == "tool":  # the template writes the content with tojson
            return _LLAMA3_HEADER.format("ipython") + tojson(message_text(m))
        role = "ipython" if m.role in _TOOL_ROLES else m.role
        text = _LLAMA3_HEADER.format(role) + ("<|python_tag|>" if m.ipython else "")
        return text + message_text(m, self.image_token, strip=True)

    def render(
        self,
        messages: list[Message],
        add_end_tokens: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[Chunk]:
        chunks = [Chunk("<|begin_of_text|>", True)]
        system = ("Environment: ipython\n" if tools is not None else "") + (
            self.system_preamble or ""
        )
        has_system = bool(messages) and messages[0].role == "system"
        if (self.system_preamble is not None or tools is not None) and not has_system:
            chunks.append(Chunk(_LLAMA3_HEADER.format("system") + system + "<|eot_id|>", True))
        first_user = int(has_system) if tools is not None else -1
        if first_user == len(messages):
            raise ValueError(
                "Llama 3's official chat template refuses this conversation: Cannot put tools "
                "in the first user message when there's no first user message!"
            )
        n = len(messages)
        for i, m in enumerate(messages):
            if i == 0 and has_system:
                text = _LLAMA3_HEADER.format("system") + system + message_text(m, strip=True)
            elif i == first_user:  # the template closes this turn even when it is the last
                text = _LLAMA3_HEADER.format("user") + llama3_tools_prompt(tools or [])
                text += message_text(m, self.image_token, strip=True) + "<|eot_id|>"
                chunks.append(Chunk(text, m.masked, source=m))
                continue
            else:
                text = self._message_text(m, i)
            if _ends(i, n, add_end_tokens):
                text += "<|eot_id|>" if m.eot or m.tool_calls else "<|eom_id|>"
            chunks.append(Chunk(text, m.masked, source=m))
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


_LLAMA3_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"


class ChatMLFormat:
    """ChatML as Qwen2/Qwen2.5/SmolLM2 render it: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.

    ``default_system_prompt`` is inserted (masked) when the conversation has none, as the
    official Qwen2.5 and SmolLM2 templates do. Tool results (``tool``/``ipython``) are
    ``<tool_response>`` blocks; consecutive ones share one ``user`` turn (Qwen's
    convention); torchtune's ``ipython`` assistant messages are wrapped in ``<tool_call>``.

    ``tools=True`` (Qwen2.5): function schemas and ``tool_calls`` as Qwen2.5's official
    template renders them: the system message (or the default prompt) followed by the
    ``# Tools`` block, and each call as a ``<tool_call>`` block after the content.
    ``reasoning`` is not rendered (neither template has it). With ``tools=False``
    (Qwen2, SmolLM2: templates without tool support) tool schemas and calls are refused;
    ``family`` names the model in that error.
    """

    def __init__(
        self,
        default_system_prompt: str | None = None,
        image_token: str | None = None,
        tools: bool = False,
        family: str | None = None,
    ):
        self.default_system_prompt = default_system_prompt
        self.image_token = image_token
        self.renders_tools = tools
        self.family = family or ("Qwen2.5" if tools else "ChatML")

    def _system(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> Chunk | None:
        """The system turn, or None when the first message is rendered as one as it is."""
        first = messages[0] if messages and messages[0].role == "system" else None
        if tools:
            text = message_text(first) if first is not None else self.default_system_prompt
            text = f"<|im_start|>system\n{text}\n\n{qwen_tools_block(tools)}<|im_end|>\n"
            return Chunk(text, True) if first is None else Chunk(text, first.masked, source=first)
        if first is not None or self.default_system_prompt is None:
            return None
        return Chunk(f"<|im_start|>system\n{self.default_system_prompt}<|im_end|>\n", True)

    def _tool_result(self, messages: list[Message], i: int, end: str) -> str:
        prev_tool = i > 0 and messages[i - 1].role in _TOOL_ROLES
        next_tool = i < len(messages) - 1 and messages[i + 1].role in _TOOL_ROLES
        text = "" if prev_tool else "<|im_start|>user"
        text += (
            f"\n<tool_response>\n{message_text(messages[i], self.image_token)}\n</tool_response>"
        )
        return text + ("" if next_tool else end)

    def _assistant(self, messages: list[Message], i: int, add_end_tokens: bool) -> Chunk:
        m = messages[i]
        if m.ipython:
            text = f"<|im_start|>assistant\n<tool_call>\n{message_text(m)}\n</tool_call>"
        elif m.tool_calls:
            content = message_text(m, self.image_token)
            text = "<|im_start|>assistant" + (f"\n{content}" if content else "")
            text += "".join("\n" + qwen_tool_call(c) for c in m.tool_calls)
        else:
            text = f"<|im_start|>assistant\n{message_text(m, self.image_token)}"
        return Chunk(text, m.masked, source=m)

    def render(
        self,
        messages: list[Message],
        add_end_tokens: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[Chunk]:
        system = self._system(messages, tools)
        chunks = [system] if system is not None else []
        n = len(messages)
        for i, m in enumerate(messages):
            end = "<|im_end|>\n" if _ends(i, n, add_end_tokens) else ""
            if i == 0 and system is not None and system.source is m:
                continue
            if m.role in _TOOL_ROLES:
                text = self._tool_result(messages, i, end)
                if i and messages[i - 1].role in _TOOL_ROLES:  # one turn: one chunk (a
                    chunks[-1].text += text  # plain-text <tool_response> merges with "\n")
                    chunks[-1].masked = chunks[-1].masked and m.masked
                else:
                    chunks.append(Chunk(text, m.masked, source=m))
            elif m.role == "assistant":
                chunk = self._assistant(messages, i, add_end_tokens)
                chunk.text += end
                chunks.append(chunk)
            else:
                text = f"<|im_start|>{m.role}\n{message_text(m, self.image_token)}{end}"
                chunks.append(Chunk(text, m.masked, source=m))
        return chunks


class Qwen3ChatFormat(ChatMLFormat):
    """Qwen3, as its official template renders a conversation (tools as Qwen2.5's, without
    a default system prompt).

    Assistant turns after the last user query carry ``<think>\\n{reasoning}\\n</think>\\n\\n``
    (the ``reasoning`` field, else the content's inline ``<think>...</think>``) when they
    are the final message or have reasoning; earlier turns keep only the answer. Calls
    follow as ``<tool_call>`` blocks. An open final assistant message
    (``add_end_tokens=False``, empty) is the generation prompt ``<|im_start|>assistant\\n``
    (thinking enabled, the template's default); with ``enable_thinking=False`` it is
    followed by an empty ``<think>\\n\\n</think>\\n\\n``, the template's non-thinking switch.

    ``rewrites_history``: a turn renders differently once it is no longer the final
    message (its think block is dropped), so the tokenizer assigns masks from renderings
    of the conversation's prefixes, the rule of ``HuggingFaceModelTokenizer``: such a turn
    is trained only on the part it shares with its rendering as the final message.
    """

    family = "Qwen3"
    rewrites_history = True

    def __init__(self, enable_thinking: bool = True) -> None:
        super().__init__(default_system_prompt=None, tools=True, family="Qwen3")
        self.enable_thinking = enable_thinking

    def _system(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> Chunk | None:
        first = messages[0] if messages and messages[0].role == "system" else None
        if not tools:
            return None
        text = message_text(first) + "\n\n" if first is not None else ""
        text = f"<|im_start|>system\n{text}{qwen_tools_block(tools)}<|im_end|>\n"
        return Chunk(text, True) if first is None else Chunk(text, first.masked, source=first)

    @staticmethod
    def _last_query_index(messages: list[Message]) -> int:
        """Index of the last user message that is not a tool response (the template's rule)."""
        for idx in range(len(messages) - 1, -1, -1):
            if messages[idx].role == "user":
                text = message_text(messages[idx])
                if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
                    return idx
        return len(messages) - 1

    def _assistant(self, messages: list[Message], i: int, add_end_tokens: bool) -> Chunk:
        m = messages[i]
        content = message_text(m, self.image_token)
        is_last = i == len(messages) - 1
        head = "<|im_start|>assistant\n"
        if is_last and not add_end_tokens and not content and not m.has_tool_fields:
            return Chunk(
                head + ("" if self.enable_thinking else "<think>\n\n</think>\n\n"), m.masked
            )
        if m.reasoning is not None:
            reasoning = m.reasoning
        else:
            reasoning, content = split_think(content)
        if m.ipython:
            content = f"<tool_call>\n{content}\n</tool_call>"
        after_query = i > self._last_query_index(messages)
        if after_query and (is_last or reasoning):
            text = (
                f"{head}<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"
            )
        else:
            text = head + content
        calls = m.tool_calls or []
        text += "".join(
            ("\n" if j or content else "") + qwen_tool_call(c) for j, c in enumerate(calls)
        )
        return Chunk(text, m.masked, source=m)


class GemmaChatFormat:
    """Gemma / Gemma 2: ``<bos><start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n...``.

    Gemma has no system role: a leading system message is put before the first user
    message's text followed by a blank line (the convention of Gemma 3's official
    template). Content is trimmed, as in the official template. Gemma 2's template has no
    tool support (tool schemas and calls are refused) and drops ``reasoning``.
    """

    family = "Gemma / Gemma 2"
    renders_tools = False

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
            chunks.append(Chunk(f"<start_of_turn>{role}\n{text}{end}", m.masked, source=m))
        return chunks


class Phi3ChatFormat:
    """Phi-3 / Phi-3.5: ``<|{role}|>\\n{content}<|end|>\\n`` per message and
    ``<|endoftext|>`` after a complete conversation (official template; no BOS). The
    template has no tool support and drops ``reasoning``."""

    family = "Phi-3.5"
    renders_tools = False

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        _check_roles(messages, ("system", "user", "assistant"), "Phi-3")
        chunks = []
        n = len(messages)
        for i, m in enumerate(messages):
            text = message_text(m)
            if m.role == "system" and not text:
                continue
            end = "<|end|>\n" if _ends(i, n, add_end_tokens) else ""
            chunks.append(Chunk(f"<|{m.role}|>\n{text}{end}", m.masked, source=m))
        if add_end_tokens:
            chunks.append(Chunk("<|endoftext|>", True))
        return chunks


class Phi4ChatFormat:
    """Phi-4: ``<|im_start|>{role}<|im_sep|>{content}<|im_end|>`` (no newlines, no BOS);
    Phi-4's template has no tool support and drops ``reasoning``."""

    family = "Phi-4"
    renders_tools = False

    def render(self, messages: list[Message], add_end_tokens: bool = True) -> list[Chunk]:
        _check_roles(messages, ("system", "user", "assistant"), "Phi-4")
        n = len(messages)
        return [
            Chunk(
                f"<|im_start|>{m.role}<|im_sep|>{message_text(m)}"
                + ("<|im_end|>" if _ends(i, n, add_end_tokens) else ""),
                m.masked,
                source=m,
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
    Tool schemas and calls are refused (Llama 2's and Mistral v0.1's ``[INST]`` layouts have
    none); ``reasoning`` is not rendered.
    """

    family = "Llama 2 / Mistral [INST]"
    renders_tools = False

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
            chunks.append(Chunk(text.rstrip(" "), m.masked, continuation=continuation, source=m))
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
