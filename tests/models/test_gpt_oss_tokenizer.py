"""``gpt_oss_tokenizer`` over checkpoint-style files equals transformers' ``apply_chat_template``
with the official harmony template (``../shared/assets/chat_templates/openai-gpt-oss-120b.jinja``)
on every row of the chat corpus: tools, tool calls (``commentary`` channel), tool results,
reasoning (``analysis`` channel), many turns; tokens and masks.

The o200k_harmony vocabulary is not in the assets: the vocabulary is SmolLM2's byte-level
``tokenizer.json`` with the harmony special tokens added (each one id, as in gpt-oss's
tokenizer); both sides encode with that same vocabulary. The reference mask is
``test_chat_corpus``'s (message boundaries from renderings of the conversation's prefixes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.test_chat_corpus import (
    HARMONY,
    _corpus,
    _ours,
    _reference,
    _trained,
    _vocabulary,
)
from tunesmith.models.gpt_oss import gpt_oss_tokenizer

transformers = pytest.importorskip("transformers")

TEMPLATE = "openai-gpt-oss-120b.jinja"


@pytest.fixture(scope="module")
def files(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint-like folder: tokenizer.json + tokenizer_config.json (template, eos)."""
    folder = tmp_path_factory.mktemp("gpt_oss_tok")
    (folder / "tokenizer.json").write_text(_vocabulary(assets, "smollm2", tuple(HARMONY)))
    template = (assets / "chat_templates" / TEMPLATE).read_text(encoding="utf-8")
    config = {
        "eos_token": "<|return|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def reference(files: Path):
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(files / "tokenizer.json"), eos_token="<|return|>"
    )
    ref.chat_template = json.loads((files / "tokenizer_config.json").read_text())["chat_template"]
    return ref


def test_corpus_equals_harmony_template(files: Path, reference) -> None:
    ours = gpt_oss_tokenizer(str(files / "tokenizer.json"))
    rendered = tools = reasoning = 0
    for row in _corpus():
        try:
            expected = _reference(reference, row)
        except Exception as e:  # the template refuses the row: so does the tokenizer
            with pytest.raises(ValueError) as info:
                _ours(ours, row)
            assert "\n" not in str(info.value)
            assert (str(e).splitlines() or [""])[0] in str(info.value)
            continue
        tokens, mask = _ours(ours, row)
        assert tokens == expected[0], (row["id"], reference.decode(tokens))
        assert mask == expected[1], (
            row["id"],
            _trained(reference, tokens, mask),
            _trained(reference, *expected),
        )
        text = reference.decode(tokens)
        rendered += 1
        tools += "<|channel|>commentary to=functions." in text or " to=functions." in text
        reasoning += "<|channel|>analysis<|message|>" in text
    assert rendered >= 30 and tools >= 15 and reasoning >= 5, (rendered, tools, reasoning)


def test_trained_tokens_follow_the_template(files: Path, reference) -> None:
    """Final turn: analysis (when reasoning is given) + final channel ending in <|return|>.
    An earlier turn is trained as far as the template renders it the same way in the whole
    conversation as in the conversation ending with it: the template drops earlier turns'
    reasoning and ends them in <|end|>, so a turn that had reasoning keeps only its
    ``<|start|>assistant<|channel|>`` header, one without keeps its final-channel text.
    ``masking_strategy="train_on_last"`` trains exactly the final turn."""
    ours = gpt_oss_tokenizer(str(files / "tokenizer.json"))
    row = next(
        r
        for r in _corpus()
        if r["messages"][-1].get("reasoning_content")
        and sum(m["role"] == "assistant" for m in r["messages"]) > 1
        and not r.get("tools")
    )
    last = row["messages"][-1]
    tail = (
        f"<|start|>assistant<|channel|>analysis<|message|>{last['reasoning_content']}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{last['content']}<|return|>"
    )
    tokens, mask = _ours(ours, row)
    trained = _trained(reference, tokens, mask)
    assert trained.endswith(tail), trained
    assert "<|start|>user" not in trained and "<|start|>system" not in trained
    earlier = [m for m in row["messages"][:-1] if m["role"] == "assistant"]
    for message in earlier:  # never the <|end|> the template closes an earlier turn with
        assert f"{message['content']}<|end|>" not in trained
    only_last = _ours(ours, row, masking_strategy="train_on_last")
    assert only_last[0] == tokens and _trained(reference, *only_last) == tail
    masked_tokens, masked = _ours(ours, row, train_on_reasoning=False)
    assert masked_tokens == tokens
    assert last["reasoning_content"] not in _trained(reference, tokens, masked)


def test_reasoning_effort_reaches_the_system_prompt(files: Path, reference) -> None:
    from tunesmith.data import Message

    ours = gpt_oss_tokenizer(
        str(files / "tokenizer.json"), template_kwargs={"reasoning_effort": "high"}
    )
    tokens, _ = ours.tokenize_messages([Message("user", "Hi"), Message("assistant", "Hello")])
    want = reference.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        reasoning_effort="high",
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert tokens == list(want) and "Reasoning: high" in reference.decode(tokens)
