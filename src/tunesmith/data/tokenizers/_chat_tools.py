"""Tool-use and reasoning pieces of the family chat formats, as the official templates write them.

One helper per layout, shared by every format that uses it (``_chat_formats``):

* Llama 3.1/3.2/3.3: function schemas go into the first user message
  (``tools_in_user_message``, the template's default) after the instructions below, as
  ``tojson(indent=4)``; a call is ``{"name": ..., "parameters": {...}}``; a ``tool``
  result is the ``ipython`` role with its content written as a JSON string.
* Qwen2.5 / Qwen3: the ``# Tools`` block of the system message, ``<tool_call>`` JSON
  blocks after the answer, results as ``<tool_response>`` blocks of a ``user`` turn;
  Qwen3's ``<think>`` blocks.

``tojson`` is the filter ``transformers`` gives templates (``ensure_ascii=False``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tunesmith.data._messages import Message

__all__ = [
    "tojson",
    "llama3_tools_prompt",
    "llama3_tool_call",
    "qwen_tools_block",
    "qwen_tool_call",
    "split_think",
    "reasoning_texts",
    "refuse_tool_shapes",
    "common_prefix_len",
    "mask_by_prefixes",
    "TEMPLATE_ROUTE",
]

TEMPLATE_ROUTE = (
    "tokenize it with a chat template that does: "
    "tokenizer._component_=tunesmith.data.tokenizers.HuggingFaceModelTokenizer "
    "(tokenizer.json + tokenizer_config.json or chat_template=...)"
)


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    """The ``tojson`` filter of ``transformers``' template sandbox."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def llama3_tools_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """What Llama 3.1's template puts before the first user message's text."""
    text = (
        "Given the following functions, please respond with a JSON for a function call "
        "with its proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of '
        "argument name and its value}.Do not use variables.\n\n"
    )
    return text + "".join(tojson(t, indent=4) + "\n\n" for t in tools)


def llama3_tool_call(message: Message, index: int) -> str:
    """The single call of an assistant message, as Llama 3.1's template writes it."""
    calls = message.tool_calls or []
    if len(calls) != 1:
        raise ValueError(
            f"message {index} has {len(calls)} tool calls; Llama 3's official chat template "
            "refuses this conversation: This model only supports single tool-calls at once!"
        )
    fn = calls[0]["function"]
    return '{"name": "' + fn["name"] + '", "parameters": ' + tojson(fn["arguments"]) + "}"


def qwen_tools_block(tools: Sequence[Mapping[str, Any]]) -> str:
    """The ``# Tools`` section of Qwen2.5/Qwen3's system message (without the system text)."""
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        + "".join("\n" + tojson(t) for t in tools)
        + "\n</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def qwen_tool_call(call: Mapping[str, Any]) -> str:
    """One ``<tool_call>`` block (arguments are a mapping after ``Message`` normalisation)."""
    fn = call["function"]
    return (
        '<tool_call>\n{"name": "'
        + fn["name"]
        + '", "arguments": '
        + tojson(fn["arguments"])
        + "}\n</tool_call>"
    )


def split_think(content: str) -> tuple[str, str]:
    """``(reasoning, answer)`` of content holding ``<think>...</think>`` (Qwen3's split:
    reasoning without the newlines around it, answer without leading newlines)."""
    if "</think>" not in content:
        return "", content
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


def reasoning_texts(message: Message) -> list[str]:
    """The texts whose tokens ``mask_reasoning`` keeps out of the loss: the ``reasoning``
    field and an inline ``<think>`` block's text, each stripped (empty ones dropped)."""
    texts = []
    if message.reasoning and message.reasoning.strip():
        texts.append(message.reasoning.strip())
    content = message.text_content
    if "</think>" in content:
        inline = content.split("</think>")[0].split("<think>")[-1].strip()
        if inline:
            texts.append(inline)
    return texts


def refuse_tool_shapes(family: str, messages: list[Message], tools: Sequence[Any] | None) -> None:
    """One-line ``ValueError`` for tool schemas / calls / results where ``family``'s official
    template has no tool support (reasoning is not refused: such templates drop it)."""
    what = None
    if tools:
        what = "the row has a 'tools' column"
    for i, m in enumerate(messages):
        if what is not None:
            break
        if m.tool_calls:
            what = f"message {i} has tool_calls"
        elif m.tool_call_id is not None:
            what = f"message {i} has tool_call_id"
    if what is not None:
        raise ValueError(
            f"{what}, but {family}'s official chat template has no tool support; " + TEMPLATE_ROUTE
        )


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def mask_by_prefixes(
    messages: list[Message],
    n_tokens: int,
    prefix_end: Callable[[int], int],
    text: str,
    offsets: Sequence[tuple[int, int]],
) -> tuple[list[bool], int]:
    """The loss mask of a rendered conversation whose template may rewrite earlier turns.

    Message ``i`` owns the tokens from ``prefix_end(i)`` to ``prefix_end(i + 1)`` (each
    the length of the common token prefix of the full encoding and the encoding of
    ``messages[:k]``, never going back); a rewritten part of a turn therefore belongs to
    a later message. ``mask_reasoning`` messages have their reasoning's tokens (found in
    ``text``; ``offsets`` are the tokens' character spans) masked.

    Returns:
        ``(mask, end)``: mask of length ``n_tokens`` (True = not trained on; tokens
        before the first message's are masked) and the end of the last message's tokens.
    """
    mask = [True] * n_tokens
    start = prefix_end(0)
    for i, message in enumerate(messages):
        end = max(start, prefix_end(i + 1))
        mask[start:end] = [message.masked] * (end - start)
        if message.mask_reasoning and not message.masked:
            for a, b in reasoning_token_spans(message, text, offsets, start, end):
                mask[a:b] = [True] * (b - a)
        start = end
    return mask, start


def reasoning_token_spans(
    message: Message, text: str, offsets: Sequence[tuple[int, int]], start: int, end: int
) -> list[tuple[int, int]]:
    """Token spans (within tokens ``start:end``, the message's own) of ``message``'s
    reasoning texts (:func:`reasoning_texts`) in the rendered ``text``."""
    if start >= end:
        return []
    lo, hi = offsets[start][0], offsets[end - 1][1]
    spans = []
    for reasoning in reasoning_texts(message):
        at = text.find(reasoning, lo, hi)
        if at < 0:  # the template does not render this turn's reasoning
            continue
        stop = at + len(reasoning)
        first = next(i for i in range(start, end) if offsets[i][1] > at)
        last = max(i for i in range(start, end) if offsets[i][0] < stop)
        spans.append((first, last + 1))
    return spans
