"""Multi-turn chat dataset builders (ShareGPT and OpenAI conversation styles)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunesmith.config import ConfigError
from tunesmith.data import OpenAIToMessages, ShareGPTToMessages
from tunesmith.datasets._common import sft_dataset

__all__ = ["chat_dataset", "slimorca_dataset"]

# conversation_style -> (message transform, the transform's conversation column key)
_STYLES: dict[str, tuple[Callable, str]] = {
    "sharegpt": (ShareGPTToMessages, "conversations"),
    "openai": (OpenAIToMessages, "messages"),
}


def chat_dataset(
    tokenizer: Any,
    *,
    source: str,
    conversation_column: str,
    conversation_style: str,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    split_across_pack: bool = False,
    masking_strategy: str | None = None,
    train_on_reasoning: bool = True,
    tools_column: str = "tools",
    **load_dataset_kwargs: Any,
) -> Any:
    """Conversations in ``conversation_column``.

    ``conversation_style="sharegpt"``: ``[{"from": "system|human|gpt|function_call|
    observation", "value": str}]``; ``"openai"``: ``[{"role", "content", "tool_calls"?,
    "tool_call_id"?, "reasoning_content"?}]``. ``train_on_input=False`` trains on the
    assistant turns only; ``masking_strategy="train_on_last"`` on the last one only.
    ``tools_column`` (when the row has it) holds the function schemas given to the chat
    template; ``train_on_reasoning=False`` masks reasoning traces. Tool calls and reasoning
    need a tokenizer that renders the model's official template
    (``HuggingFaceModelTokenizer``); see docs/tool-calling.md.
    """
    style = _STYLES.get(conversation_style) if isinstance(conversation_style, str) else None
    if style is None:
        raise ConfigError(
            f"dataset.conversation_style={conversation_style!r} is not a conversation style; "
            "use 'sharegpt' ([{from, value}] turns) or 'openai' ([{role, content}] turns)",
            key="dataset.conversation_style",
        )
    to_messages, column = style
    message_transform = to_messages(
        train_on_input=train_on_input,
        column_map={column: conversation_column, "tools": tools_column},
        new_system_prompt=new_system_prompt,
        masking_strategy=masking_strategy,
        train_on_reasoning=train_on_reasoning,
    )
    # a missing column is named by the builder's own key, not column_map
    message_transform.config_keys = {column: "conversation_column"}
    return sft_dataset(
        tokenizer,
        message_transform,
        source=source,
        filter_fn=filter_fn,
        split=split,
        packed=packed,
        split_across_pack=split_across_pack,
        **load_dataset_kwargs,
    )


def slimorca_dataset(
    tokenizer: Any,
    *,
    source: str = "Open-Orca/SlimOrca-Dedup",
    column_map: dict[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> Any:
    """SlimOrca (ShareGPT-style ``conversations``)."""
    message_transform = ShareGPTToMessages(
        train_on_input=train_on_input, column_map=column_map, new_system_prompt=new_system_prompt
    )
    return sft_dataset(
        tokenizer,
        message_transform,
        source=source,
        filter_fn=filter_fn,
        split=split,
        packed=packed,
        **load_dataset_kwargs,
    )
