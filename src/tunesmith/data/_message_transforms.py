"""Message transforms: one dataset row (a dict) -> ``{"messages": list[Message]}``.

Names and arguments follow torchtune. Each transform reads its columns through
``column_map`` (``{expected_name: name_in_dataset}``) and raises
:class:`~tunesmith.data.DataRowError` naming the column when a row is missing a
column, holds a null, or holds non-string content; the dataset layer adds the
row index with ``err.with_row_index(i)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.data._messages import (
    DataRowError,
    Message,
    mask_messages,
    masking_strategy_from,
)

__all__ = [
    "InputOutputToMessages",
    "AlpacaToMessages",
    "ChosenRejectedToMessages",
    "ShareGPTToMessages",
    "OpenAIToMessages",
    "load_image",
]


def load_image(path_or_url: str | Path, column: str = "image") -> Any:
    """Open an image file as a fully loaded ``PIL.Image``; ``column`` is named in errors."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow ships with the dev env
        raise ImportError("loading images needs pillow: pip install pillow") from e
    path = Path(path_or_url)
    if not path.is_file():
        raise DataRowError(f"image file {str(path)!r} does not exist", column=column)
    image = Image.open(path)
    image.load()
    return image


def _column_map(
    column_map: Mapping[str, str] | None, expected: tuple[str, ...], name: str
) -> dict[str, str]:
    """Validate a user ``column_map`` and fill identity entries for the others."""
    column_map = dict(column_map or {})
    unknown = set(column_map) - set(expected)
    if unknown:
        absent = [key for key in expected if key not in column_map]
        hint = f" Expected a key of {absent[0]!r} in column_map;" if absent else ""
        raise ValueError(
            f"{name}: column_map has unknown key(s) {sorted(unknown)}.{hint} its keys are "
            f"{list(expected)}, mapped to your dataset's column names"
        )
    return {key: column_map.get(key, key) for key in expected}


def _get_column(sample: Mapping[str, Any], column: str, *, allow_none: bool = False) -> Any:
    if column not in sample:
        raise DataRowError(
            f"missing column; the row has columns {sorted(sample)}. Set column_map to map "
            "your dataset's columns",
            column=column,
        )
    value = sample[column]
    if value is None and not allow_none:
        raise DataRowError("value is null", column=column)
    return value


def _get_text(sample: Mapping[str, Any], column: str) -> str:
    value = _get_column(sample, column)
    if not isinstance(value, str):
        raise DataRowError(
            f"expected a string, got {type(value).__name__}: {value!r:.80}", column=column
        )
    return value


def _image_part(image: Any, image_dir: Path | None, column: str) -> dict[str, Any]:
    if isinstance(image, str | Path):
        path = Path(image)
        if image_dir is not None:
            path = image_dir / path
        image = load_image(path, column)
    elif image is None:
        raise DataRowError("image is null", column=column)
    return {"type": "image", "content": image}


class InputOutputToMessages:
    """Row ``{"input", "output"[, "image"]}`` -> [system?], user, assistant.

    Args:
        train_on_input: train on the user prompt too (ignored if ``masking_strategy`` given).
        column_map: ``{"input": ..., "output": ..., "image": ...}`` to rename columns.
        new_system_prompt: if given, a system message with this text is prepended.
        image_dir: directory that relative image paths in the ``image`` column are
            resolved against. The row is multimodal when ``image_dir`` is given, when
            ``column_map`` names an ``image`` column, or when the image column holds an
            image object (e.g. a ``datasets.Image`` feature); otherwise text only.
        masking_strategy: ``train_on_all`` | ``train_on_assistant`` | ``train_on_last``.

    Raises:
        ValueError: ``image_dir`` with a ``column_map`` that has no ``image`` key (torchtune's
            check: the map names every column the rows are read from).
    """

    def __init__(
        self,
        train_on_input: bool = False,
        column_map: Mapping[str, str] | None = None,
        new_system_prompt: str | None = None,
        image_dir: str | Path | None = None,
        masking_strategy: str | None = None,
    ):
        self.masking_strategy = masking_strategy_from(train_on_input, masking_strategy)
        self.new_system_prompt = new_system_prompt
        if column_map and "image" not in column_map and image_dir is not None:
            raise ValueError(
                f"image_dir is specified as {image_dir} but 'image' is not in column_map. "
                "Please specify an 'image' key in column_map (column_map.image=<image column>)."
            )
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self._explicit_image = bool(column_map) and "image" in column_map
        self.column_map = _column_map(column_map, ("input", "output", "image"), type(self).__name__)

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        user_content: list[dict[str, Any]] = []
        image_col = self.column_map["image"]
        value = sample.get(image_col)
        image_object = value is not None and not isinstance(value, str | Path)
        if self.image_dir is not None or self._explicit_image or image_object:
            image = _get_column(sample, image_col)
            user_content.append(_image_part(image, self.image_dir, image_col))
        user_content.append(
            {"type": "text", "content": _get_text(sample, self.column_map["input"])}
        )
        messages = []
        if self.new_system_prompt is not None:
            messages.append(Message(role="system", content=self.new_system_prompt))
        messages.append(Message(role="user", content=user_content))
        messages.append(
            Message(role="assistant", content=_get_text(sample, self.column_map["output"]))
        )
        mask_messages(messages, self.masking_strategy)
        return {"messages": messages}


_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


class AlpacaToMessages:
    """Alpaca row ``{"instruction", "input", "output"}`` -> user (Alpaca prompt), assistant.

    The ``input`` column is optional: missing, null or empty selects the no-input prompt.
    torchtune's default is ``train_on_input=True`` and so is this one.
    """

    def __init__(
        self,
        train_on_input: bool = True,
        column_map: Mapping[str, str] | None = None,
        masking_strategy: str | None = None,
    ):
        self.masking_strategy = masking_strategy_from(train_on_input, masking_strategy)
        self.column_map = _column_map(
            column_map, ("instruction", "input", "output"), type(self).__name__
        )

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        instruction = _get_text(sample, self.column_map["instruction"])
        input_col = self.column_map["input"]
        extra = sample.get(input_col)
        if extra is not None and not isinstance(extra, str):
            raise DataRowError(f"expected a string, got {type(extra).__name__}", column=input_col)
        if extra:
            prompt = _ALPACA_WITH_INPUT.format(instruction=instruction, input=extra)
        else:
            prompt = _ALPACA_NO_INPUT.format(instruction=instruction)
        messages = [
            Message(role="user", content=prompt),
            Message(role="assistant", content=_get_text(sample, self.column_map["output"])),
        ]
        mask_messages(messages, self.masking_strategy)
        return {"messages": messages}


def _messages_from_dicts(
    turns: Any, column: str, role_key: str = "role", content_key: str = "content"
) -> list[dict[str, Any]]:
    if turns is None:
        raise DataRowError("value is null", column=column)
    if not isinstance(turns, list | tuple):
        raise DataRowError(
            f"expected a list of messages, got {type(turns).__name__}", column=column
        )
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise DataRowError(f"message {i} is not a dict: {turn!r:.80}", column=column)
        for key in (role_key, content_key):
            if key not in turn:
                raise DataRowError(f"message {i} has no '{key}' key", column=column)
            if turn[key] is None:
                raise DataRowError(f"message {i} has a null '{key}'", column=column)
    return list(turns)


class ChosenRejectedToMessages:
    """Preference row ``{"chosen": [msg dicts], "rejected": [msg dicts]}``.

    Returns ``{"chosen": list[Message], "rejected": list[Message]}``; with
    ``train_on_input=False`` only assistant messages are trained on.
    """

    def __init__(
        self,
        train_on_input: bool = False,
        column_map: Mapping[str, str] | None = None,
        new_system_prompt: str | None = None,
        masking_strategy: str | None = None,
    ):
        self.masking_strategy = masking_strategy_from(train_on_input, masking_strategy)
        self.new_system_prompt = new_system_prompt
        self.column_map = _column_map(column_map, ("chosen", "rejected"), type(self).__name__)

    def _convert(self, sample: Mapping[str, Any], key: str) -> list[Message]:
        column = self.column_map[key]
        turns = _messages_from_dicts(_get_column(sample, column), column)
        messages = []
        if self.new_system_prompt is not None:
            messages.append(Message(role="system", content=self.new_system_prompt))
        for i, turn in enumerate(turns):
            if self.new_system_prompt is not None and turn["role"] == "system":
                continue
            messages.append(_message_or_row_error(turn["role"], turn["content"], column, i))
        mask_messages(messages, self.masking_strategy)
        return messages

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "chosen": self._convert(sample, "chosen"),
            "rejected": self._convert(sample, "rejected"),
        }


def _parse_tools(value: Any, column: str) -> list[dict[str, Any]] | None:
    """A row's ``tools``: a list of function schemas or that list as a JSON string."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataRowError(f"tools is not valid JSON ({e.msg})", column=column) from None
    if not isinstance(value, list | tuple) or not all(isinstance(t, Mapping) for t in value):
        raise DataRowError(
            f"tools must be a list of function schemas ({{'type': 'function', 'function': "
            f"{{'name', 'description', 'parameters'}}}}), got {value!r:.80}",
            column=column,
        )
    return [dict(t) for t in value] or None


def _with_tools(out: dict[str, Any], sample: Mapping[str, Any], column: str) -> dict[str, Any]:
    tools = _parse_tools(sample.get(column), column)
    if tools is not None:
        out["tools"] = tools
    return out


def _message_or_row_error(
    role: Any, content: Any, column: str, index: int, **kwargs: Any
) -> Message:
    try:
        return Message(role=role, content=content, **kwargs)
    except DataRowError as e:
        raise DataRowError(f"message {index}: {e.reason}", column=column) from None


class ShareGPTToMessages:
    """ShareGPT row ``{"conversations": [{"from": "system|human|gpt", "value": str}]}``.

    Tool use as LLaMA-Factory's ShareGPT layout writes it: ``"from": "function_call"`` turns
    hold the call(s) as JSON (``{"name", "arguments"}`` or a list of them) and become
    assistant ``tool_calls`` (following a ``gpt`` turn's text when one precedes them);
    ``"from": "observation"`` turns are tool results; the optional ``tools`` column holds
    the function schemas. ``train_on_reasoning=False`` masks inline ``<think>`` blocks.

    With ``image_dir`` set, the row's ``image`` column (a path relative to
    ``image_dir``) is loaded and placed before the first user message's text,
    replacing ``image_tag`` in it when present.
    """

    _ROLES = {
        "system": "system",
        "human": "user",
        "gpt": "assistant",
        "user": "user",
        "function_call": "assistant",
        "observation": "tool",
    }

    def __init__(
        self,
        train_on_input: bool = False,
        column_map: Mapping[str, str] | None = None,
        new_system_prompt: str | None = None,
        image_dir: str | Path | None = None,
        image_tag: str | None = "<image>",
        masking_strategy: str | None = None,
        train_on_reasoning: bool = True,
    ):
        self.masking_strategy = masking_strategy_from(train_on_input, masking_strategy)
        self.new_system_prompt = new_system_prompt
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.image_tag = image_tag
        self.train_on_reasoning = train_on_reasoning
        self.column_map = _column_map(
            column_map, ("conversations", "image", "tools"), type(self).__name__
        )

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        column = self.column_map["conversations"]
        turns = _messages_from_dicts(_get_column(sample, column), column, "from", "value")
        messages: list[Message] = []
        if self.new_system_prompt is not None:
            messages.append(Message(role="system", content=self.new_system_prompt))
        image_loaded = False
        for i, turn in enumerate(turns):
            role = self._ROLES.get(turn["from"])
            if role is None:
                raise DataRowError(
                    f"message {i} has 'from'={turn['from']!r}; expected one of {list(self._ROLES)}",
                    column=column,
                )
            if role == "system" and self.new_system_prompt is not None:
                continue
            value = turn["value"]
            if not isinstance(value, str):
                raise DataRowError(
                    f"message {i} 'value' must be a string, got {type(value).__name__}",
                    column=column,
                )
            content: str | list[dict[str, Any]] = value
            if role == "user" and self.image_dir is not None and not image_loaded:
                image_col = self.column_map["image"]
                image = _image_part(_get_column(sample, image_col), self.image_dir, image_col)
                text = value.replace(self.image_tag, "") if self.image_tag else value
                content = [image, {"type": "text", "content": text}]
                image_loaded = True
            if turn["from"] == "function_call":
                calls = _sharegpt_calls(value, column, i)
                if messages and messages[-1].role == "assistant" and not messages[-1].tool_calls:
                    messages[-1].tool_calls = calls  # "gpt" text, then its calls
                    continue
                messages.append(Message(role="assistant", content="", tool_calls=calls))
                continue
            messages.append(
                _message_or_row_error(
                    role, content, column, i, mask_reasoning=not self.train_on_reasoning
                )
            )
        mask_messages(messages, self.masking_strategy)
        return _with_tools({"messages": messages}, sample, self.column_map["tools"])


def _sharegpt_calls(value: str, column: str, index: int) -> list[dict[str, Any]]:
    """A ``function_call`` turn's JSON (one ``{"name", "arguments"}`` or a list) as tool calls."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise DataRowError(
            f"message {index} (function_call) is not valid JSON ({e.msg})", column=column
        ) from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not all(isinstance(c, Mapping) and isinstance(c.get("name"), str) for c in calls):
        raise DataRowError(
            f"message {index} (function_call) must hold {{'name', 'arguments'}} or a list of "
            f"them, got {value!r:.80}",
            column=column,
        )
    out = [
        {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
        for c in calls
    ]
    try:
        return Message("assistant", "", tool_calls=out).tool_calls or []
    except DataRowError as e:
        raise DataRowError(f"message {index}: {e.reason}", column=column) from None


class OpenAIToMessages:
    """OpenAI-style row ``{"messages": [{"role", "content", ...}], "tools"?: [...]}``.

    ``content`` is a string or a list of ``{"type": "text", "text": ...}`` /
    ``{"type": "image_url", "image_url": {"url": ...}}`` parts (local paths or
    ``file://`` URLs are loaded; remote URLs are not fetched). Assistant messages may carry
    ``tool_calls`` and ``reasoning_content`` (also read as ``reasoning`` / ``thinking``;
    content may then be null); ``tool`` messages
    ``tool_call_id`` / ``name``. The optional ``tools`` column (a list of JSON function
    schemas, or that list as a JSON string) is passed to the chat template.
    ``train_on_reasoning=False`` masks reasoning traces (``reasoning_content`` or an inline
    ``<think>...</think>``) while the rest of each trained assistant turn is trained on.
    """

    def __init__(
        self,
        train_on_input: bool = False,
        column_map: Mapping[str, str] | None = None,
        new_system_prompt: str | None = None,
        masking_strategy: str | None = None,
        train_on_reasoning: bool = True,
    ):
        self.masking_strategy = masking_strategy_from(train_on_input, masking_strategy)
        self.new_system_prompt = new_system_prompt
        self.train_on_reasoning = train_on_reasoning
        self.column_map = _column_map(column_map, ("messages", "tools"), type(self).__name__)

    def _convert_content(self, content: Any, column: str, index: int) -> Any:
        if isinstance(content, str):
            return content
        if not isinstance(content, list | tuple):
            raise DataRowError(
                f"message {index} content must be a string or a list of parts, "
                f"got {type(content).__name__}",
                column=column,
            )
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "content": part["text"]})
            elif kind == "image_url" and isinstance(part.get("image_url"), Mapping):
                url = str(part["image_url"].get("url", ""))
                if url.startswith(("http://", "https://")):
                    raise DataRowError(
                        f"message {index}: remote image URLs are not fetched ({url!r}); "
                        "download the images and use local paths",
                        column=column,
                    )
                parts.append({"type": "image", "content": load_image(url.removeprefix("file://"))})
            else:
                raise DataRowError(
                    f"message {index} has an unsupported content part {part!r:.80}",
                    column=column,
                )
        return parts

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        column = self.column_map["messages"]
        turns = _messages_from_dicts(_get_column(sample, column), column, content_key="role")
        messages: list[Message] = []
        if self.new_system_prompt is not None:
            messages.append(Message(role="system", content=self.new_system_prompt))
        for i, turn in enumerate(turns):
            if turn["role"] == "system" and self.new_system_prompt is not None:
                continue
            raw = turn.get("content")
            # transformers' names for the reasoning trace, the standard one first
            reasoning = next(
                (turn[k] for k in ("reasoning_content", "reasoning", "thinking") if turn.get(k)),
                None,
            )
            if raw is None and not (turn.get("tool_calls") or reasoning):
                what = "a null" if "content" in turn else "no"
                raise DataRowError(f"message {i} has {what} 'content' key", column=column)
            content = self._convert_content("" if raw is None else raw, column, i)
            messages.append(
                _message_or_row_error(
                    turn["role"],
                    content,
                    column,
                    i,
                    tool_calls=turn.get("tool_calls"),
                    tool_call_id=turn.get("tool_call_id"),
                    name=turn.get("name"),
                    reasoning=reasoning,
                    mask_reasoning=not self.train_on_reasoning,
                )
            )
        mask_messages(messages, self.masking_strategy)
        return _with_tools({"messages": messages}, sample, self.column_map["tools"])
