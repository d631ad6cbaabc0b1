"""Every saved HF folder carries the chat template and the stop tokens the run trained with.

Checked with transformers itself: ``AutoTokenizer.from_pretrained(saved)`` renders (and
tokenizes) conversations exactly as the training tokenizer's template does, and
``GenerationConfig.from_pretrained(saved).eos_token_id`` holds every stop token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.recipes._recipe_toys import EOS, write_instruct_data, write_tiny_llama
from tests.recipes.conftest import base_config

# the SmolLM2 template without its default system prompt: what this run trains on, unlike
# the chat_template.jinja beside the asset tokenizer
TRAINED_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Reverse and shout: apple"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "HELLO"},
        {"role": "user", "content": "again?"},
    ],
]


def test_hf_tokenizer_run_saves_its_template_tokenizer_and_stop_ids(
    assets: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    from tunesmith.data import Message
    from tunesmith.recipes.finetune import recipe_main

    smol = assets / "tokenizers" / "smollm2"
    model = write_tiny_llama(tmp_path / "base", vocab_size=49152, tied=True, hidden_size=32)
    # a base model whose config names only <|endoftext|> (0); the chat format stops at
    # <|im_end|> (2): the saved generation config must list both
    for name in ("config.json", "generation_config.json"):
        data = json.loads((model / name).read_text())
        data.update(eos_token_id=0, bos_token_id=1)
        (model / name).write_text(json.dumps(data))
    out = tmp_path / "run"
    cfg = base_config(
        out,
        model,
        write_instruct_data(tmp_path / "data.json", n=16),
        max_steps_per_epoch=2,
        tokenizer={
            "_component_": "tunesmith.data.tokenizers.HuggingFaceModelTokenizer",
            "tokenizer_json_path": str(smol / "tokenizer.json"),
            "tokenizer_config_json_path": str(smol / "tokenizer_config.json"),
            "chat_template": TRAINED_TEMPLATE,
            "max_seq_len": 128,
        },
    )
    recipe_main(OmegaConf.create(cfg))
    saved = out / "epoch_1"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (saved / name).is_file(), name
    assert (saved / "chat_template.jinja").read_text() == TRAINED_TEMPLATE
    assert not (model / "chat_template.jinja").exists()  # the input folder is untouched

    from tunesmith.config import instantiate

    ours = instantiate(OmegaConf.create(cfg["tokenizer"]))
    hf = transformers.AutoTokenizer.from_pretrained(saved)
    reference = transformers.AutoTokenizer.from_pretrained(smol)  # the asset's own template
    for conv in CONVERSATIONS:
        text = hf.apply_chat_template(conv, tokenize=False)
        assert text == reference.apply_chat_template(
            conv, chat_template=TRAINED_TEMPLATE, tokenize=False
        )
        if conv[0]["role"] != "system":  # the asset's template adds its default system turn
            assert text != reference.apply_chat_template(conv, tokenize=False)
        messages = [Message(role=m["role"], content=m["content"]) for m in conv]
        tokens, _ = ours.tokenize_messages(messages, add_end_tokens=True)
        ids = hf.apply_chat_template(conv, tokenize=True, return_dict=False)
        assert tokens == list(ids)

    generation = transformers.GenerationConfig.from_pretrained(saved)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [0]
    assert set(ours.stop_tokens) <= set(eos) and 0 in eos
    assert hf.convert_ids_to_tokens(2) == "<|im_end|>" and 2 in eos


def test_toy_tokenizer_stop_token_reaches_generation_config(
    run_finetune: Callable[..., Path],
) -> None:
    transformers = pytest.importorskip("transformers")
    out = run_finetune("toy", max_steps_per_epoch=1)
    generation = transformers.GenerationConfig.from_pretrained(out / "epoch_1")
    config = json.loads((out / "epoch_1" / "config.json").read_text())
    assert generation.eos_token_id == [config["eos_token_id"], EOS]


def test_tokenizer_files_come_from_the_tokenizer_folder(tmp_path: Path) -> None:
    """torchtune's layout: ``tokenizer.path`` is ``<model>/original/tokenizer.model`` and the
    HF tokenizer files sit one folder up; a checkpoint folder with none gets them."""
    from tunesmith.training.checkpointing._serving import serving_info, write_serving_files

    model = tmp_path / "model"
    (model / "original").mkdir(parents=True)
    (model / "original" / "tokenizer.model").write_bytes(b"ranks")
    (model / "tokenizer.json").write_text('{"v": 1}')
    (model / "tokenizer_config.json").write_text('{"eos_token": "<e>"}')
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text('{"eos_token_id": 5, "bos_token_id": 4}')

    class Tok:
        eos_id, bos_id, pad_id, stop_tokens = 5, 4, 0, [5, 7, 9]

    info = serving_info(Tok(), {"path": str(model / "original" / "tokenizer.model")})
    write_serving_files(saved, info)
    assert (saved / "tokenizer.json").read_text() == '{"v": 1}'
    assert (saved / "tokenizer_config.json").read_text() == '{"eos_token": "<e>"}'
    assert not (saved / "chat_template.jinja").exists()  # no Jinja template was trained
    gen = json.loads((saved / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [5, 7, 9] and gen["bos_token_id"] == 4
