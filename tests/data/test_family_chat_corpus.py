"""Family tokenizers (the builders torchtune configs name) equal the official templates on
the chat corpus: tools, tool calls and results, reasoning, system prompts, many turns.

For each family whose vocabulary is in the assets, the family tokenizer built from its own
files (Llama 3's tiktoken ``tokenizer.model``, Qwen's ``vocab.json`` + ``merges.txt``,
SmolLM2's ``tokenizer.json``, Phi-3's SentencePiece pieces) tokenizes every corpus row; the
reference is ``transformers``' ``apply_chat_template`` with the official template on the
same vocabulary in ``tokenizer.json`` form, and the reference mask is the one of
``test_chat_corpus`` (message boundaries from renderings of the conversation's prefixes).
Tokens and masks must be equal, with the masking choices too: the last assistant turn
only, and reasoning masked (compared with ``HuggingFaceModelTokenizer`` on the same
template, whose reasoning masks ``test_chat_corpus`` checks). Rows the official template
refuses are refused with its message; families whose official template has no tool
support (SmolLM2, Phi-3.5, Gemma 2, Phi-4, Llama 2 / Mistral ``[INST]``) refuse tool rows in
one line naming the template route, and render every other row as their template does.
Gemma's SentencePiece model is not in the assets: its rows are compared as rendered text
encoded by a stand-in model (see ``test_chat_format``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data import Message, OpenAIToMessages
from tunesmith.data.tokenizers import ChatModelTokenizer, HuggingFaceModelTokenizer

from .test_chat_corpus import DATE, _corpus, _ours, _pair, _reference, _trained

transformers = pytest.importorskip("transformers")

TOOL_FAMILIES = ("llama3_1", "llama3_2", "llama3_3", "qwen2_5", "qwen3")
FAMILIES = (*TOOL_FAMILIES, "smollm2", "phi3_5")
TEMPLATES = {
    "llama3_1": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "llama3_2": "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "llama3_3": "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "qwen2_5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwen3": "Qwen-Qwen3-0.6B.jinja",
    "phi3_5": "microsoft-Phi-3.5-mini-instruct.jinja",
}


def _hf_pair(vocab: str, template: str, bos: str | None, eos: str) -> tuple[Any, Any]:
    """(transformers' tokenizer, ``HuggingFaceModelTokenizer``) on ``vocab`` + ``template``."""
    from tokenizers import Tokenizer

    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(vocab), bos_token=bos, eos_token=eos
    )
    ref.chat_template = template
    route = HuggingFaceModelTokenizer.from_tokenizer_object(
        Tokenizer.from_str(vocab), template, eos_token=eos, bos_token=bos, template_kwargs=DATE
    )
    return ref, route


def _qwen2_5_vocabulary(assets: Path) -> str:
    """Qwen2's tokenizer.json with Qwen2.5's added-token names (the GGUF's are ``[PADnnn]``)
    and no more: ``<tool_response>`` is plain text for Qwen2.5, as in its tokenizer."""
    from tunesmith.models.qwen2_5 import QWEN2_5_SPECIAL_TOKENS

    data = json.loads((assets / "tokenizers" / "qwen2" / "tokenizer.json").read_text())
    names = {i: n for n, i in QWEN2_5_SPECIAL_TOKENS.items() if i > 151645}
    vocab = data["model"]["vocab"]
    data["added_tokens"] = [a for a in data["added_tokens"] if a["id"] <= 151664]
    for added in data["added_tokens"]:
        if added["id"] in names:
            vocab.pop(added["content"], None)
            added["content"] = names[added["id"]]
            vocab[added["content"]] = added["id"]
    return json.dumps(data)


def _phi3_vocabulary(assets: Path) -> str:
    from tokenizers import AddedToken

    from tunesmith.models.phi3 import PHI3_SPECIAL_TOKENS

    from .test_chat_format import _legacy_llama_reference

    ref = _legacy_llama_reference(assets / "tokenizers" / "llama2" / "tokenizer.model")
    for name, _ in sorted(PHI3_SPECIAL_TOKENS.items(), key=lambda kv: kv[1]):
        ref.add_special_tokens([AddedToken(name, special=True, normalized=False)])
    return ref.to_str()


def _family(assets: Path, name: str) -> tuple[Any, Any, Any]:
    """(family tokenizer, transformers reference, HuggingFaceModelTokenizer route)."""
    folder = assets / "tokenizers"
    qwen = (str(folder / "qwen2" / "vocab.json"), str(folder / "qwen2" / "merges.txt"))
    if name.startswith("llama3"):
        from tunesmith.models.llama3_1 import llama3_1_tokenizer

        ref, route = _pair(assets, TEMPLATES[name])
        return llama3_1_tokenizer(str(folder / "llama3" / "tokenizer.model")), ref, route
    if name == "qwen3":
        from tunesmith.models.qwen3 import qwen3_tokenizer

        ref, route = _pair(assets, TEMPLATES[name])
        return qwen3_tokenizer(*qwen), ref, route
    if name == "qwen2_5":
        from tunesmith.models.qwen2_5 import qwen2_5_tokenizer

        template = (assets / "chat_templates" / TEMPLATES[name]).read_text()
        return qwen2_5_tokenizer(*qwen), *_hf_pair(
            _qwen2_5_vocabulary(assets), template, None, "<|im_end|>"
        )
    if name == "smollm2":
        from tunesmith.models.smollm2 import smollm2_tokenizer

        path = folder / "smollm2" / "tokenizer.json"
        template = (folder / "smollm2" / "chat_template.jinja").read_text()
        return smollm2_tokenizer(str(path)), *_hf_pair(
            path.read_text(), template, None, "<|im_end|>"
        )
    from tunesmith.models.phi3 import phi3_mini_tokenizer

    template = (assets / "chat_templates" / TEMPLATES[name]).read_text()
    family = phi3_mini_tokenizer(str(folder / "llama2" / "tokenizer.model"))
    return family, *_hf_pair(_phi3_vocabulary(assets), template, None, "<|endoftext|>")


def _has_tool_shapes(row: dict[str, Any]) -> bool:
    return bool(row.get("tools")) or any(
        m.get("tool_calls") or m["role"] == "tool" for m in row["messages"]
    )


def _one_line_refusal(family: Any, row: dict[str, Any], *needles: str) -> None:
    with pytest.raises(ValueError) as info:
        _ours(family, row)
    message = str(info.value)
    assert "\n" not in message, (row["id"], message)
    for needle in needles:
        assert needle in message, (row["id"], message, needle)


def _generation_prompt(family: Any, ref: Any, row: dict[str, Any]) -> None:
    """The conversation without its final answer plus an open empty assistant message ==
    the template's generation prompt."""
    sample = OpenAIToMessages(train_on_input=False)(row)
    *history, _ = sample["messages"]
    tools = sample.get("tools")
    tokens, _ = family.tokenize_messages(
        [*history, Message("assistant", "")], add_end_tokens=False, tools=tools
    )
    dicts = [m.template_dict() for m in history]
    expected = ref.apply_chat_template(
        dicts, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True, **DATE
    )["input_ids"]
    assert tokens == list(expected), (row["id"], ref.decode(tokens), ref.decode(expected))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow if n in ("llama3_2", "llama3_3") else ())
        for n in FAMILIES
    ],
)
def test_family_tokenizer_equals_official_template(assets: Path, name: str) -> None:
    family, ref, _ = _family(assets, name)
    rendered = tool_rows = 0
    for row in _corpus():
        try:
            expected_tokens, expected_mask = _reference(ref, row)
        except Exception as e:  # the official template refuses the row: so does the family
            _one_line_refusal(family, row, (str(e).splitlines() or [""])[0])
            continue
        if name not in TOOL_FAMILIES and _has_tool_shapes(row):
            _one_line_refusal(family, row, "no tool support", "HuggingFaceModelTokenizer")
            continue
        tokens, mask = _ours(family, row)
        assert tokens == expected_tokens, (
            row["id"],
            ref.decode(tokens),
            ref.decode(expected_tokens),
        )
        if name == "phi3_5":  # the family masks the final <|endoftext|> (torchtune's rule)
            assert ref.convert_ids_to_tokens(tokens[-1]) == "<|endoftext|>" and mask[-1]
            expected_mask = [*expected_mask[:-1], True]
        assert mask == expected_mask, (
            row["id"],
            _trained(ref, tokens, mask),
            _trained(ref, tokens, expected_mask),
        )
        if row["messages"][-1]["role"] == "assistant" and len(row["messages"]) > 1:
            _generation_prompt(family, ref, row)
        rendered += 1
        tool_rows += _has_tool_shapes(row)
    assert rendered >= 15, f"{name}: only {rendered} rows rendered"
    if name in TOOL_FAMILIES:
        assert tool_rows >= 20, f"{name}: only {tool_rows} tool rows rendered"


@pytest.mark.parametrize(
    "name",
    ["llama3_1", pytest.param("qwen2_5", marks=pytest.mark.slow), "qwen3", "smollm2"],
)
def test_family_masking_choices_equal_official_template(assets: Path, name: str) -> None:
    """``masking_strategy="train_on_last"`` == the reference with only the last assistant
    turn trained; ``train_on_reasoning=False`` == the template tokenizer's masks (same
    tokens, reasoning out of the loss where the template renders it)."""
    family, ref, route = _family(assets, name)
    masked_reasoning = 0
    for row in _corpus():
        if name not in TOOL_FAMILIES and _has_tool_shapes(row):
            continue
        try:
            expected = _reference(ref, row, only_last=True)
        except Exception:  # refused by the template (checked above)
            continue
        assert _ours(family, row, masking_strategy="train_on_last") == expected, row["id"]
        tokens, mask = _ours(family, row, train_on_reasoning=False)
        assert (tokens, mask) == _ours(route, row, train_on_reasoning=False), (
            row["id"],
            _trained(ref, tokens, mask),
            _trained(ref, *_ours(route, row, train_on_reasoning=False)),
        )
        masked_reasoning += mask != _ours(family, row)[1]
    # reasoning is rendered (and so maskable) in the inline-<think> rows of every family,
    # and in every reasoning row of Qwen3
    assert masked_reasoning >= (8 if name == "qwen3" else 2), (name, masked_reasoning)


def test_qwen3_thinking_switch_with_tools(assets: Path) -> None:
    """``qwen3_tokenizer(enable_thinking=False)``: the generation prompt after tool rounds
    is ``apply_chat_template(enable_thinking=False)``'s."""
    from tunesmith.models.qwen3 import qwen3_tokenizer

    folder = assets / "tokenizers" / "qwen2"
    family = qwen3_tokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), enable_thinking=False
    )
    _, ref, _ = _family(assets, "qwen3")
    checked = 0
    for row in _corpus():
        if not row.get("tools") or row["messages"][-1]["role"] != "assistant":
            continue
        sample = OpenAIToMessages()(row)
        history = sample["messages"][:-1]
        tokens, _ = family.tokenize_messages(
            [*history, Message("assistant", "")], add_end_tokens=False, tools=sample["tools"]
        )
        expected = ref.apply_chat_template(
            [m.template_dict() for m in history],
            tools=sample["tools"],
            add_generation_prompt=True,
            enable_thinking=False,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        assert tokens == list(expected), row["id"]
        assert ref.decode(tokens).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize(
    ("chat_format", "family"),
    [("gemma", "Gemma"), ("phi3", "Phi-3.5"), ("phi4", "Phi-4"), ("inst", "Mistral")],
)
def test_formats_without_tool_support_refuse_tool_rows(
    assets: Path, chat_format: str, family: str
) -> None:
    """One line: which family's template has no tool support and which tokenizer renders
    tools; reasoning alone is not refused (these templates drop it)."""
    from tokenizers import Tokenizer

    from tunesmith.models.mistral import mistral_tokenizer

    if chat_format == "inst":  # SentencePiece only (Llama 2's pieces stand in for Mistral's)
        tok = mistral_tokenizer(str(assets / "tokenizers" / "llama2" / "tokenizer.model"))
    else:
        tok = ChatModelTokenizer.from_tokenizer_object(
            Tokenizer.from_file(str(assets / "tokenizers" / "smollm2" / "tokenizer.json")),
            chat_format=chat_format,
            eos_token="<|im_end|>",
        )
    row = next(r for r in _corpus() if r["id"] == "tool-calc-0")
    sample = OpenAIToMessages()(row)
    with pytest.raises(ValueError, match="'tools' column.*no tool support") as info:
        tok.tokenize_messages(sample["messages"], tools=sample["tools"])
    assert family in str(info.value) and "HuggingFaceModelTokenizer" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="message 1 has tool_calls"):
        tok.tokenize_messages(sample["messages"][:2])
    row = next(r for r in _corpus() if r["id"] == "reasoning-field-0")
    tokens, _ = tok.tokenize_messages(OpenAIToMessages()(row)["messages"])
    assert row["messages"][-1]["reasoning_content"].strip() not in tok.decode(tokens)


def test_gemma_family_renders_corpus_as_gemma2_template(assets: Path, tmp_path: Path) -> None:
    """Gemma 2 (vocabulary absent: the stand-in SentencePiece model of ``test_chat_format``):
    rows without a system prompt or tools encode as the official template's text; tool rows
    are refused in one line; the trained tokens are the model turns."""
    import sentencepiece as spm
    from transformers.utils.chat_template_utils import render_jinja_template

    from tunesmith.models.gemma import gemma_tokenizer

    from .test_chat_format import _gemma_like_model

    model = _gemma_like_model(assets, tmp_path)
    family = gemma_tokenizer(str(model))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    template = (assets / "chat_templates" / "google-gemma-2-2b-it.jinja").read_text()
    compared = 0
    for row in _corpus():
        if _has_tool_shapes(row):
            _one_line_refusal(family, row, "Gemma", "no tool support", "HuggingFaceModelTokenizer")
            continue
        if row["messages"][0]["role"] == "system":
            continue  # Gemma 2's template refuses system prompts (the family folds them)
        dicts = [m.template_dict() for m in OpenAIToMessages()(row)["messages"]]
        text = render_jinja_template(conversations=[dicts], chat_template=template, bos_token="")[
            0
        ][0]
        tokens, mask = _ours(family, row)
        assert tokens == [sp.bos_id(), *sp.encode(text)], row["id"]
        trained = sp.decode([t for t, m in zip(tokens, mask) if not m])
        answers = [m["content"].strip() for m in row["messages"] if m["role"] == "assistant"]
        assert all(a in trained for a in answers) and "<start_of_turn>user" not in trained
        compared += 1
    assert compared >= 8


@pytest.mark.slow
def test_torchtune_llama3_tokenizer_renders_tools_without_date_header(assets: Path) -> None:
    """torchtune's ``llama3_tokenizer`` never writes Llama 3.1's date header: its tool rows
    are the official rendering without it (``Environment: ipython`` stays)."""
    from tunesmith.models.llama3 import llama3_tokenizer

    family = llama3_tokenizer(str(assets / "tokenizers" / "llama3" / "tokenizer.model"))
    _, ref, _ = _family(assets, "llama3_1")
    header = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    checked = 0
    for row in _corpus():
        if not row.get("tools"):
            continue
        try:
            expected = ref.decode(_reference(ref, row)[0]).replace(header, "")
        except Exception:  # refused (parallel calls)
            continue
        tokens, _ = _ours(family, row)
        assert ref.decode(tokens) == expected, row["id"]
        assert "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n" in expected
        checked += 1
    assert checked >= 15


def test_prompt_template_keeps_tool_fields(assets: Path) -> None:
    """A prompt template wraps the text of messages; their tool calls, call ids and
    reasoning stay, so a templated tool row still renders its calls."""
    from tunesmith.models.qwen2_5 import qwen2_5_tokenizer

    folder = assets / "tokenizers" / "qwen2"
    tok = qwen2_5_tokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        prompt_template={"user": ["Q: ", ""]},
    )
    row = next(r for r in _corpus() if r["id"] == "tool-calc-0")
    sample = OpenAIToMessages()(row)
    text = tok.decode(tok.tokenize_messages(sample["messages"], tools=sample["tools"])[0], False)
    assert "<|im_start|>user\nQ: " in text and text.count("<tool_call>\n{") == 2  # schema + call
