"""Messages: the unit every dataset row becomes before tokenization.

A ``Message`` is one turn of a conversation. Its content is a list of parts
``{"type": "text" | "image", "content": str | image}`` (a plain string is turned
into a single text part), so text-only and multimodal data share one type.
``masked=True`` means the tokens of the message are not trained on.

Tool use and reasoning follow the OpenAI chat format: an assistant message may carry
``tool_calls`` (``[{"type": "function", "id"?, "function": {"name", "arguments"}}]``,
``arguments`` a dict or a JSON string) and ``reasoning`` (the ``reasoning_content`` field;
``mask_reasoning=True`` keeps it out of the loss); a ``tool`` message carries the
``tool_call_id`` (and optionally the function ``name``) it answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

from tunesmith.data._errors import DataError

__all__ = [
    "Role",
    "Message",
    "DataRowError",
    "MaskingStrategy",
    "mask_messages",
    "validate_messages",
]

Role = Literal["system", "user", "assistant", "ipython", "tool"]
VALID_ROLES: tuple[str, ...] = ("system", "user", "assistant", "ipython", "tool")


class DataRowError(DataError):
    """A dataset row that cannot be turned into messages (a user error, so a ``ValueError``).

    ``column`` names the offending column (or ``None`` when the whole row is at
    fault); ``row_index`` is filled in by the dataset layer, which knows it,
    through :meth:`with_row_index`, as are ``source`` (the dataset / file) and ``fix``.
    Renders as ``row 12, column 'messages': <reason> (<source>): <fix>``.
    """

    def __init__(
        self,
        reason: str,
        column: str | None = None,
        row_index: int | None = None,
        *,
        source: str | None = None,
        fix: str | None = None,
    ):
        self.reason = reason
        self.column = column
        self.row_index = row_index
        self.source = source
        where = []
        if row_index is not None:
            where.append(f"row {row_index}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + reason, source or "", fix or "")

    def with_row_index(self, row_index: int) -> DataRowError:
        """Return a copy of this error that also names the row index."""
        return type(self)(
            self.reason, column=self.column, row_index=row_index, source=self.source, fix=self.fix
        )


def _normalise_content(content: Any, column: str | None = None) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        parts: list[dict[str, Any]] = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or "type" not in part or "content" not in part:
                raise DataRowError(
                    f"content part {i} must be a dict with 'type' and 'content' keys, got {part!r}",
                    column=column,
                )
            if part["type"] not in ("text", "image"):
                raise DataRowError(
                    f"content part {i} has type {part['type']!r}; expected 'text' or 'image'",
                    column=column,
                )
            if part["type"] == "text" and not isinstance(part["content"], str):
                raise DataRowError(
                    f"text part {i} must hold a string, got {type(part['content']).__name__}",
                    column=column,
                )
            parts.append(dict(part))
        return parts
    raise DataRowError(
        f"message content must be a string or a list of parts, got {type(content).__name__}"
        + (" (null)" if content is None else ""),
        column=column,
    )


class Message:
    """One conversation turn.

    Args:
        role: one of ``system``, ``user``, ``assistant``, ``ipython``, ``tool``.
        content: a string, or a list of ``{"type": "text"|"image", "content": ...}`` parts.
        masked: when True the message's tokens are excluded from the loss.
        ipython: the message is a tool call (assistant messages only).
        eot: the message ends the turn (the end-of-turn token follows it).
        tool_calls: OpenAI-style function calls (assistant messages only).
        tool_call_id: the call a ``tool`` message answers.
        name: the function name of a ``tool`` message.
        reasoning: the assistant's reasoning trace (``reasoning_content``).
        mask_reasoning: exclude the reasoning trace's tokens (an inline ``<think>`` block
            or ``reasoning``) from the loss while training on the rest of the message.
    """

    def __init__(
        self,
        role: Role,
        content: str | list[dict[str, Any]],
        masked: bool = False,
        ipython: bool = False,
        eot: bool = True,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        reasoning: str | None = None,
        mask_reasoning: bool = False,
    ):
        self.role = role
        self.content = _normalise_content(content)
        self.masked = masked
        self.ipython = ipython
        self.eot = eot
        self.tool_calls = _normalise_tool_calls(tool_calls)
        self.tool_call_id = tool_call_id
        self.name = name
        self.reasoning = reasoning
        self.mask_reasoning = mask_reasoning
        self._validate()

    @property
    def has_tool_fields(self) -> bool:
        """Whether the message uses tool-calling or reasoning fields (not plain content)."""
        return bool(self.tool_calls) or self.tool_call_id is not None or self.reasoning is not None

    def template_dict(self, image_token: str | None = None) -> dict[str, Any]:
        """The message as a chat template sees it (OpenAI / ``transformers`` layout):
        ``role``, ``content`` (a string; image parts become ``image_token``) and, where set,
        ``tool_calls``, ``tool_call_id``, ``name``, ``reasoning_content``."""
        text = "".join(
            part["content"] if part["type"] == "text" else (image_token or "")
            for part in self.content
        )
        d: dict[str, Any] = {"role": self.role, "content": text}
        if self.tool_calls:
            d["tool_calls"] = [dict(c, function=dict(c["function"])) for c in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            d["name"] = self.name
        if self.reasoning is not None:  # under the names templates read (as transformers does)
            d["reasoning_content"] = d["thinking"] = self.reasoning
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Message:
        """Build a message from ``{"role", "content", "masked"?, "ipython"?, "eot"?}``."""
        missing = [k for k in ("role", "content") if k not in d]
        if missing:
            raise DataRowError(f"message dict is missing key(s) {missing}: {dict(d)!r}")
        return cls(
            role=d["role"],
            content=d["content"],
            masked=d.get("masked", False),
            ipython=d.get("ipython", False),
            eot=d.get("eot", True),
            tool_calls=d.get("tool_calls"),
            tool_call_id=d.get("tool_call_id"),
            name=d.get("name"),
            reasoning=d.get("reasoning", d.get("reasoning_content")),
            mask_reasoning=d.get("mask_reasoning", False),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "role": self.role,
            "content": self.content,
            "masked": self.masked,
            "ipython": self.ipython,
            "eot": self.eot,
        }
        for key in ("tool_calls", "tool_call_id", "name", "reasoning"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.mask_reasoning:
            d["mask_reasoning"] = True
        return d

    def get_media(self) -> list[Any]:
        """The image parts' contents, in order."""
        return [part["content"] for part in self.content if part["type"] == "image"]

    @property
    def contains_media(self) -> bool:
        return any(part["type"] == "image" for part in self.content)

    @property
    def text_content(self) -> str:
        """All text parts concatenated (image parts skipped)."""
        return "".join(part["content"] for part in self.content if part["type"] == "text")

    def _validate(self) -> None:
        if self.role not in VALID_ROLES:
            raise DataRowError(f"message role {self.role!r} is not one of {list(VALID_ROLES)}")
        if self.ipython and self.contains_media:
            raise ValueError(
                "Media tokens in tool calls are not supported. Both are set in message: "
                f"{self.text_content[:80]!r} (a tool-call (ipython) message cannot contain media)"
            )
        if self.ipython and self.role != "assistant":
            raise DataRowError(
                f"Only assistant messages can be tool calls. Found role {self.role} in message: "
                f"{self.text_content[:80]} (ipython=True marks an assistant's tool call)"
            )
        if self.tool_calls and self.role != "assistant":
            raise DataRowError(f"a {self.role} message has tool_calls; only assistant messages may")
        if self.reasoning is not None and self.role != "assistant":
            raise DataRowError(f"a {self.role} message has reasoning; only assistant messages may")
        if self.reasoning is not None and not isinstance(self.reasoning, str):
            raise DataRowError(
                f"reasoning_content must be a string, got {type(self.reasoning).__name__}"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        """torchtune's ``Message(role='user', content=[<part contents>])``, followed by the
        fields that differ from their defaults."""
        parts = [part["content"] for part in self.content]
        extra = [f"masked={self.masked}"] if self.masked else []
        extra += [f"ipython={self.ipython}"] if self.ipython else []
        extra += [f"eot={self.eot}"] if not self.eot else []
        extra += [f"{k}={getattr(self, k)!r}" for k in ("tool_calls", "tool_call_id", "name",
                  "reasoning") if getattr(self, k)]  # fmt: skip
        return f"Message(role={self.role!r}, content={parts!r}{''.join(', ' + e for e in extra)})"


def _normalise_tool_calls(calls: Any) -> list[dict[str, Any]] | None:
    """OpenAI tool calls -> ``[{"type": "function", "id"?, "function": {"name", "arguments"}}]``
    with ``arguments`` parsed to a dict when given as a JSON string (templates that write
    arguments themselves expect a mapping; those that need a string serialise it)."""
    if calls is None:
        return None
    if not isinstance(calls, Sequence) or isinstance(calls, str | bytes):
        raise DataRowError(f"tool_calls must be a list, got {type(calls).__name__}")
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise DataRowError(
                f"tool call {i} must be {{'type': 'function', 'function': {{'name': str, "
                f"'arguments': dict | JSON string}}}}, got {call!r:.120}"
            )
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise DataRowError(
                    f"tool call {i} ({fn['name']}): arguments are not valid JSON ({e.msg})"
                ) from None
        if not isinstance(args, Mapping):
            raise DataRowError(
                f"tool call {i} ({fn['name']}): arguments must be an object, got "
                f"{type(args).__name__}"
            )
        new: dict[str, Any] = {"type": call.get("type") or "function"}
        if call.get("id") is not None:
            new["id"] = str(call["id"])
        new["function"] = {"name": fn["name"], "arguments": dict(args)}
        out.append(new)
    return out


class MaskingStrategy(StrEnum):
    """Which messages are trained on (torchtune's ``masking_strategy``)."""

    TRAIN_ON_ALL = "train_on_all"
    TRAIN_ON_ASSISTANT = "train_on_assistant"
    TRAIN_ON_LAST = "train_on_last"


def masking_strategy_from(train_on_input: bool, masking_strategy: str | None) -> MaskingStrategy:
    """``masking_strategy`` wins when given; otherwise ``train_on_input`` picks all/assistant."""
    if masking_strategy is not None:
        try:
            return MaskingStrategy(masking_strategy)
        except ValueError:
            valid = [m.value for m in MaskingStrategy]
            raise ValueError(
                f"masking_strategy={masking_strategy!r} is not one of {valid}"
            ) from None
    return MaskingStrategy.TRAIN_ON_ALL if train_on_input else MaskingStrategy.TRAIN_ON_ASSISTANT


def mask_messages(messages: list[Message], masking_strategy: MaskingStrategy | str) -> None:
    """Set ``masked`` in place. Tool results (``ipython``/``tool`` roles) are never trained on."""
    strategy = MaskingStrategy(masking_strategy)
    marked_last = False
    for message in reversed(messages):
        if message.role in ("ipython", "tool"):
            message.masked = True
        elif strategy is MaskingStrategy.TRAIN_ON_ALL:
            message.masked = False
        elif strategy is MaskingStrategy.TRAIN_ON_ASSISTANT:
            message.masked = message.role != "assistant"
        else:
            message.masked = not (message.role == "assistant" and not marked_last)
            if message.role == "assistant":
                marked_last = True


def validate_messages(messages: list[Message]) -> None:
    """Check conversation order: at most one system message, first; no two user turns in a row.

    Raises:
        ValueError: naming the offending message index.
    """
    if len(messages) < 2:
        raise ValueError(f"Messages must be at least length 2, but got {len(messages)} messages")
    last_role = None
    for i, message in enumerate(messages):
        if message.role == "system" and i > 0:
            raise ValueError(
                f"System message at index {i} in messages, but system messages must come first"
            )
        if message.role == "assistant" and last_role not in (
            "user",
            "ipython",
            "tool",
            "assistant",
        ):
            raise ValueError(
                f"Assistant message before expected user message at index {i} in messages "
                f"(it follows {last_role!r}; it must follow a user or tool message)"
            )
        if message.role == "user" and last_role == "user":
            raise ValueError(f"Two consecutive user messages at index {i} and {i - 1} in messages")
        last_role = message.role
