"""Tool calls, tool results, tool schemas and reasoning in the message transforms.

The ShareGPT layout (``function_call`` / ``observation`` turns, LLaMA-Factory's convention)
and JSON-string arguments must give exactly the tokens of the same conversation in the
OpenAI layout, rendered by Qwen2.5's official template through ``transformers``; bad rows
are one-line errors naming the column and message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data import DataRowError, Message, OpenAIToMessages, ShareGPTToMessages
from tunesmith.data.tokenizers import HuggingFaceModelTokenizer

from .test_chat_corpus import _corpus, _pair, _ref_ids

TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]


def _row(row_id: str) -> dict[str, Any]:
    return next(r for r in _corpus() if r["id"] == row_id)


def _to_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    turns = []
    names = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
    for m in row["messages"]:
        if m.get("content"):
            turns.append({"from": names[m["role"]], "value": m["content"]})
        if m.get("tool_calls"):
            calls = [c["function"] for c in m["tool_calls"]]
            turns.append({"from": "function_call", "value": json.dumps(calls)})
    return {"conversations": turns, "tools": json.dumps(row["tools"])}


@pytest.mark.parametrize("row_id", ["tool-call-with-text", "parallel-mixed-three"])
def test_sharegpt_tool_turns_match_openai_layout(assets: Path, row_id: str) -> None:
    ref, ours = _pair(assets, "Qwen-Qwen2.5-7B-Instruct.jinja")
    row = _row(row_id)
    share = ShareGPTToMessages()(_to_sharegpt(row))
    tokens, _ = ours.tokenize_messages(share["messages"], tools=share["tools"])
    # Qwen2.5 renders no call ids, so the ids ShareGPT lacks do not matter
    assert tokens == _ref_ids(ref, row["messages"], row["tools"])


def test_json_string_arguments_equal_dict_arguments(assets: Path) -> None:
    ref, ours = _pair(assets, "Qwen-Qwen2.5-7B-Instruct.jinja")
    row = json.loads(json.dumps(_row("tool-calc-1")))
    for m in row["messages"]:
        for call in m.get("tool_calls") or []:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    row["tools"] = json.dumps(row["tools"])
    sample = OpenAIToMessages()(row)
    tokens, _ = ours.tokenize_messages(sample["messages"], tools=sample["tools"])
    plain = _row("tool-calc-1")
    assert tokens == _ref_ids(ref, plain["messages"], plain["tools"])


def test_qwen3_enable_thinking_switch(assets: Path) -> None:
    """``template_kwargs={"enable_thinking": False}`` (template tokenizer) and
    ``qwen3_tokenizer(enable_thinking=False)``: the generation prompt carries the empty think
    block, as ``apply_chat_template(enable_thinking=False)`` renders it."""
    from tokenizers import Tokenizer

    from tunesmith.models.qwen3 import qwen3_tokenizer

    ref, _ = _pair(assets, "Qwen-Qwen3-0.6B.jinja")
    vocab = ref.backend_tokenizer.to_str()
    template = ref.chat_template
    for enable in (True, False):
        tok = HuggingFaceModelTokenizer.from_tokenizer_object(
            Tokenizer.from_str(vocab),
            template,
            eos_token="<|im_end|>",
            template_kwargs={"enable_thinking": enable},
        )
        prompt = [Message("user", "2+2?"), Message("assistant", "")]
        tokens, _ = tok.tokenize_messages(prompt, add_end_tokens=False)
        expected = ref.apply_chat_template(
            [{"role": "user", "content": "2+2?"}],
            add_generation_prompt=True,
            enable_thinking=enable,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        assert tokens == list(expected)
        assert ("<think>" in ref.decode(tokens)) is (not enable)
        folder = assets / "tokenizers" / "qwen2"
        family = qwen3_tokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), enable_thinking=enable
        )
        assert family.tokenize_messages(prompt, add_end_tokens=False)[0] == list(expected)


def test_thinking_switch_is_qwen3s_only(assets: Path) -> None:
    """The Qwen tokenizers are one implementation; ``enable_thinking=False`` on a family whose
    template has no thinking switch (Qwen2, Qwen2.5) is refused, naming the family."""
    from tunesmith.models.qwen2 import qwen2_tokenizer
    from tunesmith.models.qwen2_5 import qwen2_5_tokenizer

    folder = assets / "tokenizers" / "qwen2"
    if not (folder / "vocab.json").is_file():
        pytest.skip(f"Qwen tokenizer files not in {folder}")
    for build, name in ((qwen2_tokenizer, "Qwen2"), (qwen2_5_tokenizer, "Qwen2.5")):
        with pytest.raises(ValueError, match=f"{name}'s template has no thinking switch"):
            build(str(folder / "vocab.json"), str(folder / "merges.txt"), enable_thinking=False)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}
                ]
            },
            "message 0: a user message has tool_calls",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                    },
                ]
            },
            "message 1: tool call 0 \\(f\\): arguments are not valid JSON",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": "[1, 2]"},
            "column 'tools': tools must be a list of function schemas",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]},
            "message 1 has no 'content' key",
        ),
    ],
)
def test_bad_tool_rows_are_one_line_errors(row: dict[str, Any], match: str) -> None:
    with pytest.raises(DataRowError, match=match) as info:
        OpenAIToMessages()(row)
    assert "\n" not in str(info.value)


def test_sharegpt_bad_function_call() -> None:
    row = {
        "conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "{"}]
    }
    with pytest.raises(DataRowError, match="message 1 \\(function_call\\) is not valid JSON"):
        ShareGPTToMessages()(row)


def test_message_round_trip_keeps_tool_fields() -> None:
    m = Message(
        "assistant",
        "",
        tool_calls=[{"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}],
        reasoning="why",
    )
    assert m.tool_calls == [
        {"type": "function", "id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}
    ]
    assert Message.from_dict(m.to_dict()) == m
    d = m.template_dict()
    assert d["reasoning_content"] == d["thinking"] == "why" and d["content"] == ""
    tool = Message("tool", "4", tool_call_id="c1", name="f")
    assert tool.template_dict() == {
        "role": "tool",
        "content": "4",
        "tool_call_id": "c1",
        "name": "f",
    }


def test_reasoning_field_aliases() -> None:
    """``reasoning`` and ``thinking`` are read as ``reasoning_content`` (transformers' names)."""
    for key in ("reasoning_content", "reasoning", "thinking"):
        row = {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", key: "r"},
            ]
        }
        assert OpenAIToMessages()(row)["messages"][1].reasoning == "r"
