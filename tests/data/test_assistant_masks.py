"""Every assistant turn is trained whole, checked against ``transformers``' assistant masks.

The reference: a test-only copy of the official template (read from
../shared/assets/chat_templates at test time) with ``{% generation %}...{% endgeneration %}``
inserted programmatically around each assistant turn's rendered content through its
``<|im_end|>``, rendered by ``transformers``' ``apply_chat_template(...,
return_assistant_tokens_mask=True)``, which marks the tokens of those spans. The copy must
render exactly the text of the original; tunesmith tokenizes with the ORIGINAL template
(``HuggingFaceModelTokenizer``) and with the family tokenizer.

Header convention: the generation-tag convention marks an assistant turn's output (content,
reasoning the template keeps, tool calls, end-of-turn token), not the ``<|im_start|>assistant``
header the generation prompt writes, nor the ``\\n`` after ``<|im_end|>``. tunesmith, as
torchtune, trains the whole turn, header and that ``\\n`` included; the reference marks are
therefore extended over exactly those tokens, and nothing else may differ.

Qwen3's template rewrites turns: an assistant turn before the last user query loses its
``<think>`` block once more turns follow, so a rendering of the conversation up to that turn
is not a prefix of the full rendering; all of the turn must still be trained. Qwen2.5's
template does not rewrite turns (the same check shows nothing changed there).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data import Message, OpenAIToMessages

from .test_chat_corpus import DATE, _corpus, _ours
from .test_family_chat_corpus import TEMPLATES, _family

transformers = pytest.importorskip("transformers")

OPEN, CLOSE = "{% generation %}", "{% endgeneration %}"


def _assistant_section(source: str) -> tuple[int, int]:
    start = source.index('{%- elif message.role == "assistant" %}')
    return start, source.index('{%- elif message.role == "tool" %}', start)


def _tag_qwen3(source: str) -> str:
    """Generation tags around each assistant output expression of Qwen3's template (header
    left out) and around its tool calls through ``<|im_end|>`` (the ``\\n`` left out)."""
    a, b = _assistant_section(source)
    part = source[a:b]
    header = re.compile(r"\{\{- '<\|im_start\|>' \+ message\.role \+ '\\n(.*?)\}\}")
    part, n = header.subn(
        lambda m: (
            "{{- '<|im_start|>' + message.role + '\\n' }}"
            + OPEN
            + "{{- '"
            + m.group(1)
            + "}}"
            + CLOSE
        ),
        part,
    )
    assert n == 3, n  # the think / no-think / history branches
    tail = "{%- if message.tool_calls %}"
    assert part.count(tail) == 1 and part.count("{{- '<|im_end|>\\n' }}") == 1
    part = part.replace(tail, OPEN + tail).replace(
        "{{- '<|im_end|>\\n' }}", "{{- '<|im_end|>' }}" + CLOSE + "{{- '\\n' }}"
    )
    return source[:a] + part + source[b:]


def _tag_qwen2_5(source: str) -> str:
    """Generation tags around Qwen2.5's assistant content through ``<|im_end|>``: the
    branch shared with user/system messages and the tool-call branch."""
    shared = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    assert source.count(shared) == 1
    tagged = (
        "{{- '<|im_start|>' + message.role + '\\n' }}"
        "{%- if message.role == 'assistant' %}" + OPEN + "{{- message.content + '<|im_end|>' }}"
        f"{CLOSE}{{%- else %}}{{{{- message.content + '<|im_end|>' }}}}{{%- endif %}}"
        "{{- '\\n' }}"
    )
    source = source.replace(shared, tagged)
    a, b = _assistant_section(source)
    part = source[a:b]
    head, end = "{{- '<|im_start|>' + message.role }}", "{{- '<|im_end|>\\n' }}"
    assert part.count(head) == 1 and part.count(end) == 1
    part = part.replace(head, head + OPEN).replace(
        end, "{{- '<|im_end|>' }}" + CLOSE + "{{- '\\n' }}"
    )
    return source[:a] + part + source[b:]


TAGGERS = {"qwen3": _tag_qwen3, "qwen2_5": _tag_qwen2_5}


def _reference_runs(ref: Any, tagged: str, row: dict[str, Any]) -> tuple[list[int], list[bool]]:
    """(ids, mask) from transformers' assistant mask on the tagged template, each marked run
    extended over its turn's ``<|im_start|>assistant`` header and the ``\\n`` after it."""
    kw = {"tools": row.get("tools"), "tokenize": True, "return_dict": True, **DATE}
    original = ref.apply_chat_template(row["messages"], **kw)["input_ids"]
    ref.chat_template = tagged
    out = ref.apply_chat_template(row["messages"], return_assistant_tokens_mask=True, **kw)
    ids, marks = list(out["input_ids"]), list(out["assistant_masks"])
    assert ids == list(original), row["id"]  # the tagged copy renders the same text
    start_id = ref.convert_tokens_to_ids("<|im_start|>")
    mask = [not m for m in marks]
    i = 0
    while i < len(ids):
        if not marks[i] or (i and marks[i - 1]):
            i += 1
            continue
        a = max(j for j in range(i) if ids[j] == start_id)
        assert ref.decode(ids[a:i]) in ("<|im_start|>assistant", "<|im_start|>assistant\n")
        b = i
        while b < len(ids) and marks[b]:
            b += 1
        assert ref.convert_ids_to_tokens(ids[b - 1]) == "<|im_end|>", row["id"]
        if b < len(ids) and ref.decode(ids[b : b + 1]) == "\n":
            b += 1
        mask[a:b] = [False] * (b - a)
        i = b
    return ids, mask


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < len(mask):
        if mask[i]:
            i += 1
            continue
        j = i
        while j < len(mask) and not mask[j]:
            j += 1
        out.append((i, j))
        i = j
    return out


@pytest.mark.parametrize("name", ["qwen3", "qwen2_5"])
def test_masks_equal_transformers_assistant_masks(assets: Path, name: str) -> None:
    family, ref, route = _family(assets, name)
    original = (assets / "chat_templates" / TEMPLATES[name]).read_text(encoding="utf-8")
    tagged = TAGGERS[name](original)
    multi_turn = masked_reasoning = 0
    for row in _corpus():
        ref.chat_template = original
        ids, expected = _reference_runs(ref, tagged, row)
        for tok in (route, family):  # the original template / the family chat format
            tokens, mask = _ours(tok, row)
            assert tokens == ids, row["id"]
            assert mask == expected, (row["id"], type(tok).__name__)
            # train_on_last: the last assistant turn only
            last = _runs(expected)[-1]
            only_last = [True] * len(ids)
            only_last[last[0] : last[1]] = [False] * (last[1] - last[0])
            assert _ours(tok, row, masking_strategy="train_on_last") == (ids, only_last)
            # masked reasoning: only reasoning text leaves the loss, earlier turns stay
            tokens, no_reasoning = _ours(tok, row, train_on_reasoning=False)
            assert all(n or not e for n, e in zip(no_reasoning, expected)), row["id"]
            # each removed run is a piece of a reasoning text (a field or a <think> block)
            removed = [n and not e for n, e in zip(no_reasoning, expected)]
            reasoning = " ".join(
                (m.get("reasoning_content") or "") + (m.get("content") or "")
                for m in row["messages"]
            )
            masked_reasoning += any(removed)
            for a, b in _runs([not r for r in removed]):
                text = ref.decode(tokens[a:b]).strip()
                assert text and text in reasoning, (row["id"], text)
            # generation prompt (open last turn): the earlier turns keep their masks
            sample = OpenAIToMessages(train_on_input=False)(row)
            messages = sample["messages"]
            if messages[-1].role == "assistant" and len(messages) > 1:
                prompt = [*messages[:-1], Message("assistant", "")]
                p_tokens, p_mask = tok.tokenize_messages(
                    prompt, add_end_tokens=False, tools=sample.get("tools")
                )
                head = last[0]
                assert p_tokens[:head] == ids[:head] and p_mask[:head] == expected[:head]
        assistants = sum(m["role"] == "assistant" for m in row["messages"])
        if assistants > 1:
            multi_turn += 1
            assert len(_runs(expected)) >= assistants - 1, row["id"]
    assert multi_turn >= 20, multi_turn
    assert masked_reasoning >= (16 if name == "qwen3" else 4), masked_reasoning  # 2 tokenizers
