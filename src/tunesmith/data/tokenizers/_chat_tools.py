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

import copy
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
    "rewritten_turn_end",
    "with_marked_content",
    "content_starts",
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


def with_marked_content(messages: list[Message], k: int, at_end: bool = False) -> list[Message]:
    """``messages`` with a NUL before (``at_end``: after) message ``k``'s content: where the
    full rendering and this one first differ is where that content starts (ends)."""
    marked = copy.copy(messages[k])
    mark = [{"type": "text", "content": "\x00"}]
    marked.content = [*messages[k].content, *mark] if at_end else [*mark, *messages[k].content]
    return [*messages[:k], marked, *messages[k + 1 :]]


def content_starts(
    full: str, render_marked: Callable[[int, bool], str | None], n: int
) -> list[int | None]:
    """Where each of ``n`` messages' rendered content starts in ``full``: the first
    difference of ``full`` and ``render_marked(j, False)`` (the rendering with
    :func:`with_marked_content` of message ``j``; None where the template refuses it).
    Where the template drops that mark (Qwen3 keeps only the text after an inline
    ``</think>`` in history), where the content ends (``render_marked(j, True)``); None
    where neither mark shows."""
    starts: list[int | None] = []
    for j in range(n):
        at = None
        for at_end in (False, True):
            marked = render_marked(j, at_end)
            if marked is not None and marked != full:
                at = _common_chars(full, marked)
                break
        starts.append(at)
    return starts


def rewritten_turn_end(
    prefix: str,
    full: str,
    offsets: Sequence[tuple[int, int]],
    own_start: int | None,
    next_start: int | None,
) -> int | None:
    """Token index where the last turn of ``prefix`` (the rendering of ``messages[:k]``)
    ends in ``full`` (the rendering of all the messages) when the template rendered some
    turn differently there; None when ``prefix`` is a prefix of ``full``, or when no end
    is found (the caller keeps the common token prefix).

    Templates rewrite turns in history at their start (Qwen3 drops the ``<think>`` blocks
    of assistant turns before the last user query; Mistral moves ``[AVAILABLE_TOOLS]`` to
    the last user turn) and keep the rest: the turn's text from its content's start
    ``own_start`` (in ``full``, see :func:`content_starts`) through its end-of-turn tokens
    is the same in both renderings. The end is the last point ``e`` up to where the next
    message's content starts (``next_start``; the end of ``full`` where None) with
    ``full[own_start:e]`` a suffix of ``prefix``. ``offsets`` are the ``(start, end)``
    characters of ``full``'s tokens; a token straddling the end belongs to the next message.
    """
    if full.startswith(prefix) or own_start is None:
        return None
    bound = len(full) if next_start is None else next_start
    for stop in range(bound, own_start, -1):
        if full[stop - 1] == prefix[-1] and prefix.endswith(full[own_start:stop]):
            return sum(1 for _, b in offsets if b <= stop)
    return None


def _common_chars(a: str, b: str) -> int:
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
    ``messages[:k]``, never going back), so its span is its whole turn as the full
    rendering writes it: where the template rewrote turn ``k - 1`` in ``messages[:k]``'s
    rendering, ``prefix_end(k)`` is that turn's end found by :func:`rewritten_turn_end`. ``mask_reasoning`` messages have their reasoning's tokens (found in
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
