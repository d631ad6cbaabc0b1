"""Gemma 3 / SmolLM3 / OLMo 2 / Granite 3.3 tokenizer builders render the official chat
templates (``../shared/assets/chat_templates``) token for token as transformers'
``apply_chat_template`` does, with a real byte-level BPE ``tokenizer.json`` (SmolLM2's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunesmith.data import Message
from tunesmith.models.granite3_3 import granite3_3_tokenizer
from tunesmith.models.smollm3 import smollm3_tokenizer

transformers = pytest.importorskip("transformers")

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6."},
]


@pytest.mark.parametrize(
    ("builder", "template"),
    [
        (smollm3_tokenizer, "HuggingFaceTB-SmolLM3-3B.jinja"),
        (granite3_3_tokenizer, "ibm-granite-granite-3.3-2B-Instruct.jinja"),
    ],
)
def test_prompt_tokens_equal_transformers_apply_chat_template(
    builder, template, assets: Path, tmp_path: Path
) -> None:
    source = (assets / "chat_templates" / template).read_text(encoding="utf-8")
    shutil.copy(assets / "tokenizers" / "smollm2" / "tokenizer.json", tmp_path)
    config = {"eos_token": "<|im_end|>", "bos_token": None, "chat_template": source}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = builder(str(tmp_path / "tokenizer.json"))
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="<|im_end|>"
    )
    hf.chat_template = source
    want = hf.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    messages = [Message(role=m["role"], content=m["content"]) for m in CHAT]
    tokens, mask = ours.tokenize_messages(messages, add_end_tokens=True)
    assert tokens == list(want)
    assert len(mask) == len(tokens)
