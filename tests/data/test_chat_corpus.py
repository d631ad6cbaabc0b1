"""The conversation corpus tokenizes as every official chat template does, token for token.

``tunesmith/data/chat_corpus.jsonl`` (shipped: ``tunesmith verify-export`` renders it) holds 43 OpenAI-style conversations: plain chats,
system prompts, many turns, tool calls with a ``tools`` column, tool results, parallel
calls, several rounds of tool use, reasoning (``reasoning_content`` and inline
``<think>``), reasoning with tools. For every template in ../shared/assets/chat_templates
each row goes through tunesmith (``OpenAIToMessages`` -> ``HuggingFaceModelTokenizer``)
and through ``transformers``' ``PreTrainedTokenizerFast.apply_chat_template(tools=...,
tokenize=True)`` on the same vocabulary:

* the token ids must be equal;
* the loss mask must be the reference mask: message ``k`` owns the tokens between the
  longest common token prefixes of the full encoding with ``apply_chat_template`` of
  ``messages[:k]`` and ``messages[:k+1]``, and exactly the assistant messages' tokens are
  trained on (``train_on_input=False``);
* where the template refuses a row (``raise_exception``: Gemma 2 and system prompts or
  tools, Llama 3.1 and parallel calls, ...), tunesmith refuses it with a one-line error
  that carries the template's message, and the dataset layer names the row.

Vocabularies: Llama 3.x / Hermes 3 / Functionary / DeepSeek-R1-Llama use the Llama 3
tokenizer (its reserved ids renamed to the family's special tokens, e.g. 128008
``<|eom_id|>``, 128010 ``<|python_tag|>``); the Qwen family the Qwen2 vocabulary with
Qwen's added-token names. Families whose tokenizer files are not in the assets (Gemma 2/4,
Phi-3.5, Mistral, SmolLM3, Granite, gpt-oss, DeepSeek-V3.1) use the SmolLM2 byte-level
vocabulary with the family's special tokens added, so each special token is one id, as in
the family's tokenizer; both sides always encode with the same vocabulary.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import tunesmith.data
from tunesmith.data import DataRowError, OpenAIToMessages
from tunesmith.data.tokenizers import HuggingFaceModelTokenizer

transformers = pytest.importorskip("transformers")

CORPUS = Path(tunesmith.data.__file__).with_name("chat_corpus.jsonl")
DATE = {"date_string": "26 Jul 2024"}

LLAMA3_RENAMES = {128008: "<|eom_id|>", 128010: "<|python_tag|>"}
HERMES = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>"]
DEEPSEEK = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
]
MISTRAL = [
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[THINK]",
    "[/THINK]",
    "[ARGS]",
    "[CALL_ID]",
]
HARMONY = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>"]
HARMONY += ["<|constrain|>", "<|endoftext|>"]

# template -> (vocabulary, special tokens added to it, bos, eos)
SPECS: dict[str, tuple[str, list[str], str | None, str]] = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("llama3", [], "<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("llama3", [], "<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.3-70B-Instruct.jinja": ("llama3", [], "<|begin_of_text|>", "<|eot_id|>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": (
        "llama3",
        [*HERMES, "</tool_response>", "<tools>", "</tools>"],
        "<|begin_of_text|>",
        "<|im_end|>",
    ),
    "meetkai-functionary-medium-v3.2.jinja": ("llama3", [], "<|begin_of_text|>", "<|eot_id|>"),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": (
        "llama3",
        DEEPSEEK,
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("qwen", [], None, "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("qwen", [], None, "<|im_end|>"),
    "Qwen-QwQ-32B.jinja": ("qwen", [], None, "<|im_end|>"),
    "Qwen3-Coder.jinja": ("qwen", ["<function=", "</function>"], None, "<|im_end|>"),
    "Qwen3.5-4B.jinja": ("qwen", [], None, "<|im_end|>"),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": (
        "qwen",
        DEEPSEEK,
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "google-gemma-2-2b-it.jinja": (
        "smollm2",
        ["<bos>", "<start_of_turn>", "<end_of_turn>"],
        "<bos>",
        "<end_of_turn>",
    ),
    "google-gemma-4-31B-it.jinja": (
        "smollm2",
        ["<bos>", "<|turn>", "<turn|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>"]
        + ["<|tool_response>", "<tool_response|>", '<|"|>', "<|channel>", "<channel|>"],
        "<bos>",
        "<turn|>",
    ),
    "microsoft-Phi-3.5-mini-instruct.jinja": (
        "smollm2",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        None,
        "<|endoftext|>",
    ),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("smollm2", MISTRAL, "<s>", "</s>"),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": ("smollm2", MISTRAL, "<s>", "</s>"),
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": ("smollm2", MISTRAL, "<s>", "</s>"),
    "HuggingFaceTB-SmolLM3-3B.jinja": ("smollm2", ["<think>", "</think>"], None, "<|im_end|>"),
    "ibm-granite-granite-3.3-2B-Instruct.jinja": (
        "smollm2",
        ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"],
        None,
        "<|end_of_text|>",
    ),
    "openai-gpt-oss-120b.jinja": ("smollm2", HARMONY, None, "<|return|>"),
    "deepseek-ai-DeepSeek-V3.1.jinja": (
        "smollm2",
        [*DEEPSEEK, "<think>", "</think>"],
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
}


def _corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def test_corpus_covers_every_shape() -> None:
    rows = _corpus()
    assert len(rows) >= 40 and len({r["id"] for r in rows}) == len(rows)

    def count(pred: Any) -> int:
        return sum(1 for r in rows if any(pred(m) for m in r["messages"]))

    assert count(lambda m: m.get("tool_calls")) >= 15
    assert count(lambda m: len(m.get("tool_calls") or []) > 1) >= 5  # parallel calls
    assert count(lambda m: m["role"] == "tool") >= 15
    assert count(lambda m: m.get("reasoning_content")) >= 8
    assert count(lambda m: "<think>" in (m.get("content") or "")) >= 2
    assert count(lambda m: m["role"] == "system") >= 10
    assert sum(1 for r in rows if sum(m["role"] == "user" for m in r["messages"]) > 1) >= 8
    assert sum(1 for r in rows if r.get("tools")) >= 20


def _rename(data: dict[str, Any], names: dict[int, str]) -> None:
    vocab = data["model"]["vocab"]
    for added in data["added_tokens"]:
        if added["id"] in names:
            vocab.pop(added["content"], None)
            added["content"] = names[added["id"]]
            vocab[added["content"]] = added["id"]


@cache
def _vocabulary(assets: Path, kind: str, extra: tuple[str, ...]) -> str:
    """tokenizer.json text of ``kind`` with ``extra`` special tokens (see the module doc)."""
    from tokenizers import AddedToken, Tokenizer

    from tunesmith.models.qwen3 import QWEN3_SPECIAL_TOKENS

    folder = assets / "tokenizers"
    if kind == "llama3":
        data = json.loads((folder / "llama3_hf" / "tokenizer.json").read_text())
        _rename(data, LLAMA3_RENAMES)
        data["post_processor"] = None  # the BOS comes from the template's text
    elif kind == "qwen":
        data = json.loads((folder / "qwen2" / "tokenizer.json").read_text())
        _rename(data, {i: n for n, i in QWEN3_SPECIAL_TOKENS.items() if i > 151645})
    else:
        data = json.loads((folder / "smollm2" / "tokenizer.json").read_text())
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra])
    return tok.to_str()


def _pair(assets: Path, template_name: str) -> tuple[Any, HuggingFaceModelTokenizer]:
    """(transformers' tokenizer, tunesmith's tokenizer) on the same vocabulary and template."""
    from tokenizers import Tokenizer

    kind, extra, bos, eos = SPECS[template_name]
    template = (assets / "chat_templates" / template_name).read_text(encoding="utf-8")
    vocab = _vocabulary(assets, kind, tuple(extra))
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(vocab), bos_token=bos, eos_token=eos
    )
    ref.chat_template = template
    ours = HuggingFaceModelTokenizer.from_tokenizer_object(
        Tokenizer.from_str(vocab), template, eos_token=eos, bos_token=bos, template_kwargs=DATE
    )
    return ref, ours


def _ref_ids(ref: Any, messages: list[dict[str, Any]], tools: Any) -> list[int]:
    out = ref.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True, **DATE)
    return list(out["input_ids"])


def _reference(
    ref: Any, row: dict[str, Any], only_last: bool = False
) -> tuple[list[int], list[bool]]:
    """Reference ids and mask (assistant messages trained, see the module doc; with
    ``only_last`` the last assistant message only, ``masking_strategy="train_on_last"``)."""
    messages, tools = row["messages"], row.get("tools")
    full = _ref_ids(ref, messages, tools)
    bounds = []
    for k in range(len(messages) + 1):
        try:
            prefix = _ref_ids(ref, messages[:k], tools) if k else []
        except Exception:  # a template that refuses a partial conversation
            prefix = []
        n = 0
        while n < min(len(prefix), len(full)) and prefix[n] == full[n]:
            n += 1
        bounds.append(max(n, bounds[-1] if bounds else 0))
    bounds[-1] = max(bounds[-1], bounds[-2])
    mask = [True] * len(full)
    assistants = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    for k, message in enumerate(messages):
        if message["role"] == "assistant" and not (only_last and k != assistants[-1]):
            mask[bounds[k] : bounds[k + 1]] = [False] * (bounds[k + 1] - bounds[k])
    return full, mask


def _ours(tok: HuggingFaceModelTokenizer, row: dict[str, Any], **kw: Any) -> Any:
    sample = OpenAIToMessages(train_on_input=False, **kw)(row)
    return tok.tokenize_messages(sample["messages"], tools=sample.get("tools"))


# in the default suite: one template per way of laying out tools / reasoning / refusals
# (~5 s each); the rest run with the slow suite (``-m slow``)
FAST = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "google-gemma-2-2b-it.jinja",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "openai-gpt-oss-120b.jinja",
    "HuggingFaceTB-SmolLM3-3B.jinja",
}


@pytest.mark.parametrize(
    "template_name",
    [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in sorted(SPECS)],
)
def test_corpus_matches_official_template(assets: Path, template_name: str) -> None:
    ref, ours = _pair(assets, template_name)
    rendered = refused = 0
    for row in _corpus():
        try:
            expected = _reference(ref, row)
        except Exception as e:  # the official template refuses the row
            refused += 1
            with pytest.raises(ValueError) as info:
                _ours(ours, row)
            message = str(info.value)
            assert "\n" not in message, (row["id"], message)
            first_line = (str(e).splitlines() or [""])[0]
            assert first_line in message, (row["id"], message, first_line)
            continue
        rendered += 1
        tokens, mask = _ours(ours, row)
        assert tokens == expected[0], (row["id"], ref.decode(tokens), ref.decode(expected[0]))
        assert mask == expected[1], (
            row["id"],
            _trained(ref, tokens, mask),
            _trained(ref, *expected),
        )
    assert rendered >= 5, f"{template_name}: only {rendered} rows rendered ({refused} refused)"


def _trained(ref: Any, tokens: list[int], mask: list[bool]) -> str:
    return ref.decode([t for t, m in zip(tokens, mask) if not m])


def test_refused_row_is_named_by_the_dataset_layer(assets: Path) -> None:
    """Gemma 2's template rejects system prompts: ``chat_dataset`` over the corpus stops with
    a one-line error naming the first such row and the template's reason."""
    from tunesmith.datasets import chat_dataset

    _, ours = _pair(assets, "google-gemma-2-2b-it.jinja")
    index = next(i for i, r in enumerate(_corpus()) if r["messages"][0]["role"] == "system")
    ds = chat_dataset(
        ours,
        source="json",
        data_files=str(CORPUS),
        conversation_column="messages",
        conversation_style="openai",
    )
    with pytest.raises(DataRowError) as info:
        ds[index]
    text = str(info.value)
    assert "\n" not in text and f"row {index}" in text and "System role not supported" in text


@pytest.mark.parametrize(
    "template_name",
    ["Qwen-Qwen3-0.6B.jinja", "openai-gpt-oss-120b.jinja", "HuggingFaceTB-SmolLM3-3B.jinja"],
)
def test_reasoning_can_be_masked(assets: Path, template_name: str) -> None:
    """``train_on_reasoning=False``: the reasoning text is not trained on, the rest of the
    turn is, and the tokens do not change (rows whose reasoning the template renders)."""
    ref, ours = _pair(assets, template_name)
    checked = 0
    for row in _corpus():
        last = row["messages"][-1]
        inline = "</think>" in (last.get("content") or "")
        if not (last.get("reasoning_content") or inline):
            continue
        reasoning = last.get("reasoning_content") or last["content"].split("</think>")[0]
        reasoning = reasoning.replace("<think>", "").strip()
        answer = last["content"].split("</think>")[-1].strip()
        tokens, mask = _ours(ours, row)
        if reasoning not in _trained(ref, tokens, mask):
            continue  # this template drops the reasoning of this row
        masked_tokens, masked = _ours(ours, row, train_on_reasoning=False)
        assert masked_tokens == tokens
        trained = _trained(ref, masked_tokens, masked)
        assert reasoning not in trained and answer in trained, (row["id"], trained)
        checked += 1
    assert checked >= 2, f"{template_name}: reasoning rendered in only {checked} rows"


def test_train_on_last_trains_only_the_final_answer(assets: Path) -> None:
    ref, ours = _pair(assets, "Qwen-Qwen2.5-7B-Instruct.jinja")
    row = next(r for r in _corpus() if r["id"] == "tool-two-rounds")
    tokens, mask = _ours(ours, row, masking_strategy="train_on_last")
    assert _trained(ref, tokens, mask) == "<|im_start|>assistant\nAbout 4 million.<|im_end|>\n"
    tokens, mask = _ours(ours, row)  # all assistant turns: both calls and the answer
    assert _trained(ref, tokens, mask).count("<tool_call>") == 2
