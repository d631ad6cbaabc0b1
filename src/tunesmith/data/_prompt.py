"""A chat prompt as token ids, ending where the assistant's answer starts (generation,
rollouts, RL prompt datasets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunesmith.data._messages import Message

__all__ = ["prompt_tokens"]


def _as_messages(prompt: Any) -> list[Message]:
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)]
    if isinstance(prompt, Mapping):
        unknown = set(prompt) - {"system", "user"}
        if unknown or not prompt.get("user"):
            raise ValueError(
                f"prompt must be a string or {{system: ..., user: ...}} with a user text; got "
                f"keys {sorted(prompt)}"
            )
        messages = []
        if prompt.get("system"):
            messages.append(Message(role="system", content=str(prompt["system"])))
        messages.append(Message(role="user", content=str(prompt["user"])))
        return messages
    raise ValueError(f"prompt must be a string or a {{system, user}} mapping, got {prompt!r}")


def prompt_tokens(tokenizer: Any, prompt: Any) -> list[int]:
    """Token ids of a chat prompt formatted by the tokenizer, ending where the answer starts."""
    messages = _as_messages(prompt) + [Message(role="assistant", content="")]
    tokens, _ = tokenizer.tokenize_messages(messages, add_end_tokens=False)
    return list(tokens)
