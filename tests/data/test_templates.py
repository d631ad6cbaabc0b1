"""Prompt templates: torchtune's texts, config forms (dotted path, mapping), use in tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tunesmith.data import (
    AlpacaInstructTemplate,
    ChatMLTemplate,
    GemmaChatTemplate,
    GrammarErrorCorrectionTemplate,
    Message,
    PromptTemplate,
    QuestionAnswerTemplate,
    SummarizeTemplate,
    get_prompt_template,
)
from tunesmith.models.llama2 import Llama2ChatTemplate, llama2_tokenizer
from tunesmith.models.llama3 import llama3_tokenizer
from tunesmith.models.mistral import MistralChatTemplate, mistral_tokenizer


def _conv() -> list[Message]:
    return [
        Message("system", "Be brief.", masked=True),
        Message("user", "What is 2+2?", masked=True),
        Message("assistant", "4"),
    ]


def _texts(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.text_content) for m in messages]


def test_task_templates_match_torchtune_text() -> None:
    user = [Message("user", "x"), Message("assistant", "y")]
    assert _texts(QuestionAnswerTemplate()(user)) == [
        ("user", "Question: x\n\nAnswer: "),
        ("assistant", "y"),
    ]
    assert _texts(SummarizeTemplate()(user))[0] == (
        "user",
        "Summarize this dialogue:\nx\n---\nSummary:\n",
    )
    assert _texts(GrammarErrorCorrectionTemplate()(user))[0] == (
        "user",
        "Correct this to standard English: x\n---\nCorrected: ",
    )
    assert _texts(AlpacaInstructTemplate()(user))[0][1] == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nx\n\n### Response:\n"
    )


def test_template_keeps_mask_and_flags() -> None:
    out = QuestionAnswerTemplate()([Message("user", "x", masked=True, eot=False)])
    assert out[0].masked and not out[0].eot


def test_chatml_template_open_assistant() -> None:
    msgs = [Message("user", "hi"), Message("assistant", "")]
    assert _texts(ChatMLTemplate()(msgs)) == [
        ("user", "<|im_start|>user\nhi<|im_end|>\n"),
        ("assistant", "<|im_start|>assistant\n"),
    ]


def test_llama2_and_mistral_templates() -> None:
    out = Llama2ChatTemplate()(_conv())
    assert _texts(out) == [
        ("user", "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST] "),
        ("assistant", "4"),
    ]
    assert _texts(MistralChatTemplate()(_conv()[1:]))[0] == ("user", "[INST] What is 2+2? [/INST] ")
    with pytest.raises(ValueError, match="system"):
        MistralChatTemplate()(_conv())


def test_gemma_template_folds_system() -> None:
    out = GemmaChatTemplate()(_conv())
    assert _texts(out) == [
        ("user", "<start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n"),
        ("assistant", "<start_of_turn>model\n4<end_of_turn>\n"),
    ]


def test_prompt_template_from_config_forms() -> None:
    by_path = get_prompt_template("torchtune.data.QuestionAnswerTemplate")
    assert _texts(by_path([Message("user", "x")]))[0][1] == "Question: x\n\nAnswer: "
    assert isinstance(
        get_prompt_template("torchtune.models.llama2.Llama2ChatTemplate"), Llama2ChatTemplate
    )
    cfg = OmegaConf.create({"user": ["<<", ">>"], "assistant": ["", "!"]})
    custom = get_prompt_template(cfg)
    assert isinstance(custom, PromptTemplate)
    assert _texts(custom([Message("user", "a"), Message("assistant", "b")])) == [
        ("user", "<<a>>"),
        ("assistant", "b!"),
    ]
    with pytest.raises(ValueError, match="pair of strings"):
        PromptTemplate({"user": ["only one"]})
    with pytest.raises(ValueError, match="dotted path"):
        get_prompt_template(42)


def test_llama2_tokenizer_applies_default_template(assets: Path) -> None:
    path = str(assets / "tokenizers" / "llama2" / "tokenizer.model")
    tok = llama2_tokenizer(path)
    tokens, mask = tok.tokenize_messages(_conv())
    assert tok.decode(tokens, skip_special_tokens=False) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4</s>"
    )
    # Meta's reference: encode("[INST] ... [/INST] 4") with BOS and EOS, one piece of text
    assert tokens == tok.base.encode(
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4"
    )
    trained = len(tok.base.encode("4", add_bos=False, add_eos=False)) + 1  # "▁", "4" and EOS
    assert mask == [True] * (len(tokens) - trained) + [False] * trained
    tok = mistral_tokenizer(path)
    tokens, _ = tok.tokenize_messages(_conv()[1:])
    assert tok.decode(tokens, skip_special_tokens=False) == "<s>[INST] What is 2+2? [/INST] 4</s>"


def test_tokenizer_prompt_template_as_mapping(assets: Path) -> None:
    tok = llama3_tokenizer(
        str(assets / "tokenizers" / "llama3" / "tokenizer.model"),
        prompt_template={"user": ["Question: ", "\n\nAnswer: "]},
    )
    tokens, _ = tok.tokenize_messages([Message("user", "Why?"), Message("assistant", "Because.")])
    text = tok.decode(tokens, skip_special_tokens=False)
    assert "<|end_header_id|>\n\nQuestion: Why?\n\nAnswer:<|eot_id|>" in text  # content is trimmed
