"""Model-tokenizer interface: truncation, __call__, images, errors, builders from objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data import Message, mask_messages
from tunesmith.data.tokenizers import (
    ChatModelTokenizer,
    HuggingFaceModelTokenizer,
    ModelTokenizer,
    truncate,
)
from tunesmith.models.llama3 import Llama3Tokenizer, llama3_tokenizer
from tunesmith.models.llama3_1 import llama3_1_tokenizer
from tunesmith.models.phi4 import phi4_tokenizer
from tunesmith.models.qwen2_5 import qwen2_5_tokenizer
from tunesmith.models.smollm2 import smollm2_tokenizer


@pytest.fixture(scope="module")
def llama3(assets: Path) -> Llama3Tokenizer:
    return llama3_tokenizer(str(assets / "tokenizers" / "llama3" / "tokenizer.model"))


def _conv() -> list[Message]:
    return [
        Message("system", "Be brief.", masked=True),
        Message("user", "Name a colour.", masked=True),
        Message("assistant", "Blue, the colour of the clear daytime sky."),
    ]


def test_truncate_helper() -> None:
    assert truncate([1, 2, 3, 4], 3) == [1, 2, 3]
    assert truncate([1, 2, 3, 4], 3, eos_id=9) == [1, 2, 9]
    assert truncate([1, 2, 3, 4], 3, eos_id=9, truncation_type="left") == [2, 3, 9]
    with pytest.raises(ValueError, match="truncation_type"):
        truncate([1], 1, truncation_type="middle")


def test_interface_and_call(llama3: Llama3Tokenizer) -> None:
    assert isinstance(llama3, ModelTokenizer)
    sample = {"messages": _conv(), "id": 3}
    out = llama3(sample)
    assert "messages" not in out and out["id"] == 3
    assert (out["tokens"], out["mask"]) == llama3.tokenize_messages(_conv())
    assert out["tokens"][-1] == llama3.eot_id
    with pytest.raises(KeyError, match="messages"):
        llama3({"text": "x"})
    # inference leaves the final message open (no end-of-turn)
    prompt = llama3({"messages": [*_conv()[:-1], Message("assistant", "")]}, inference=True)
    assert llama3.decode(prompt["tokens"][-4:], skip_special_tokens=False) == (
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize("side", ["right", "left"])
def test_max_seq_len_truncation(assets: Path, llama3: Llama3Tokenizer, side: str) -> None:
    full, full_mask = llama3.tokenize_messages(_conv())
    tok = llama3_tokenizer(
        str(assets / "tokenizers" / "llama3" / "tokenizer.model"),
        max_seq_len=20,
        truncation_type=side,
    )
    tokens, mask = tok.tokenize_messages(_conv())
    assert len(tokens) == len(mask) == 20
    kept = full[:20] if side == "right" else full[-20:]
    kept_mask = full_mask[:20] if side == "right" else full_mask[-20:]
    assert tokens[:-1] == kept[:-1] and tokens[-1] == tok.eos_id
    assert mask[:-1] == kept_mask[:-1] and mask[-1] is True
    with pytest.raises(ValueError, match="max_seq_len"):
        llama3_tokenizer(str(assets / "tokenizers" / "llama3" / "tokenizer.model"), max_seq_len=0)


def test_image_parts(llama3: Llama3Tokenizer, assets: Path) -> None:
    msgs = [
        Message("user", [{"type": "image", "content": None}, {"type": "text", "content": "What?"}]),
        Message("assistant", "A dog."),
    ]
    tokens, _ = llama3.tokenize_messages(msgs)
    assert tokens[5] == llama3.image_id == 128256
    folder = assets / "tokenizers" / "qwen2"
    qwen = qwen2_5_tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    with pytest.raises(ValueError, match="image"):
        qwen.tokenize_messages(msgs)


def test_tool_call_and_result_llama3(llama3: Llama3Tokenizer) -> None:
    msgs = [
        Message("user", "Weather?", masked=True),
        Message("assistant", 'get_weather(city="Paris")', ipython=True, eot=False),
        Message("ipython", '{"temp": 21}'),
        Message("assistant", "21 degrees."),
    ]
    mask_messages(msgs, "train_on_assistant")
    tokens, mask = llama3.tokenize_messages(msgs)
    text = llama3.decode(tokens, skip_special_tokens=False)
    assert '<|python_tag|>get_weather(city="Paris")<|eom_id|>' in text
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>' in text
    tool_start = tokens.index(llama3.start_header_id, tokens.index(llama3.eom_id))
    assert mask[tool_start] is True  # tool results are never trained on


def test_wrong_files_fail_clearly(assets: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        llama3_tokenizer(str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="not a tiktoken ranks file"):
        llama3_tokenizer(str(assets / "tokenizers" / "llama2" / "tokenizer.model"))


def test_from_tokenizer_object_matches_dedicated(assets: Path) -> None:
    from tokenizers import Tokenizer

    path = assets / "tokenizers" / "smollm2" / "tokenizer.json"
    obj = Tokenizer.from_file(str(path))
    generic = ChatModelTokenizer.from_tokenizer_object(
        obj, chat_format="chatml", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    dedicated = smollm2_tokenizer(str(path))
    assert generic.tokenize_messages(_conv()) == dedicated.tokenize_messages(_conv())
    assert (generic.eos_id, generic.pad_id, generic.bos_id) == (2, 2, None)
    template = (assets / "tokenizers" / "smollm2" / "chat_template.jinja").read_text()
    hf = HuggingFaceModelTokenizer.from_tokenizer_object(obj, template, eos_token="<|im_end|>")
    assert hf.tokenize_messages(_conv()) == dedicated.tokenize_messages(_conv())
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        ChatModelTokenizer.from_tokenizer_object(obj, chat_format="chatml", eos_token="<nope>")
    with pytest.raises(ValueError, match="unknown chat format"):
        ChatModelTokenizer.from_tokenizer_object(obj, chat_format="vicuna", eos_token="<|im_end|>")


def test_hf_model_tokenizer_llama3_template(assets: Path) -> None:
    folder = assets / "tokenizers" / "llama3_hf"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "chat_template" not in config
    template = (assets / "chat_templates" / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    hf = HuggingFaceModelTokenizer(
        folder / "tokenizer.json",
        tokenizer_config_json_path=folder / "tokenizer_config.json",
        chat_template=template,
        template_kwargs={"date_string": "26 Jul 2024"},
    )
    native = llama3_1_tokenizer(str(assets / "tokenizers" / "llama3" / "tokenizer.model"))
    assert hf.tokenize_messages(_conv()) == native.tokenize_messages(_conv())
    with pytest.raises(ValueError, match="no chat template"):
        HuggingFaceModelTokenizer(
            folder / "tokenizer.json", tokenizer_config_json_path=folder / "tokenizer_config.json"
        )


def test_phi4_layout(assets: Path) -> None:
    """No Phi-4 files in the assets: torchtune's 2k toy BPE stands in for the vocabulary;
    the layout is Phi-4's official template (``<|im_start|>{role}<|im_sep|>...<|im_end|>``)."""
    folder = assets / "torchtune_tests"
    tok = phi4_tokenizer(str(folder / "tiny_bpe_vocab.json"), str(folder / "tiny_bpe_merges.txt"))
    tokens, mask = tok.tokenize_messages(_conv()[1:])
    assert tok.decode(tokens, skip_special_tokens=False) == (
        "<|im_start|>user<|im_sep|>Name a colour.<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Blue, the colour of the clear daytime sky.<|im_end|>"
    )
    assert tokens[0] == 100264 and tokens[-1] == tok.eos_id == 100265
    assert mask.index(False) == tokens.index(100264, 1)
    assert tok.pad_id == 100349


def test_instantiate_from_torchtune_config(assets: Path) -> None:
    from omegaconf import OmegaConf

    from tunesmith.config import instantiate

    folder = assets / "tokenizers" / "qwen2"
    cfg = OmegaConf.create(
        {
            "_component_": "torchtune.models.qwen2_5.qwen2_5_tokenizer",
            "path": str(folder / "vocab.json"),
            "merges_file": str(folder / "merges.txt"),
            "max_seq_len": 64,
            "prompt_template": {"user": ["Q: ", "\nA:"]},
        }
    )
    tok = instantiate(cfg)
    tokens, _ = tok.tokenize_messages([Message("user", "hi"), Message("assistant", "yo")])
    assert "<|im_start|>user\nQ: hi\nA:<|im_end|>" in tok.decode(tokens, skip_special_tokens=False)
    assert tok.max_seq_len == 64


def test_special_tokens_path(assets: Path) -> None:
    """torchtune's ``special_tokens_path``: the added tokens of an HF tokenizer.json."""
    tok = llama3_tokenizer(
        str(assets / "tokenizers" / "llama3" / "tokenizer.model"),
        special_tokens_path=str(assets / "tokenizers" / "llama3_hf" / "tokenizer.json"),
    )
    assert len(tok.special_tokens) == 256 and tok.special_tokens["<|eot_id|>"] == 128009
    assert tok.image_id is None  # that file has no <|image|> token
    tokens, _ = tok.tokenize_messages(_conv())
    assert tokens[:2] == [128000, 128006] and tokens[-1] == 128009
