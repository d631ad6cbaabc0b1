"""``tunesmith verify-export``: a saved folder whose template / stop tokens agree passes (exit
0); a tampered ``chat_template.jinja`` or a wrong EOS fails (exit 1) with a readable diff.

The folder is SmolLM2's real tokenizer files (tokenizer.json, tokenizer_config.json,
chat_template.jinja from the shared assets) with a config.json / generation_config.json as
a tunesmith save writes them; the reference side is ``transformers``' ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunesmith.cli.main import main

pytest.importorskip("transformers")


@pytest.fixture
def saved(assets: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "epoch_0"
    shutil.copytree(assets / "tokenizers" / "smollm2", folder)
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 2, "model_type": "llama"}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2]}))
    return folder


def test_good_folder_passes(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify-export", str(saved)]) == 0
    assert "identical on 43 conversations" in capsys.readouterr().out


def test_tampered_template_fails_with_a_diff(
    saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run trained with the template its tokenizer_config.json holds; the served
    chat_template.jinja (read first by transformers) was edited afterwards."""
    original = (saved / "chat_template.jinja").read_text()
    config = json.loads((saved / "tokenizer_config.json").read_text())
    config["chat_template"] = original
    (saved / "tokenizer_config.json").write_text(json.dumps(config))
    tampered = original.replace("named SmolLM", "named Bob")
    assert tampered != original
    (saved / "chat_template.jinja").write_text(tampered)
    assert main(["verify-export", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "difference(s) over 43 conversations" in out
    # conversations without a system prompt get the (tampered) default one
    assert "conversation 'plain-single': token" in out and "Bob" in out and "SmolLM" in out
    assert "conversation 'plain-system'" not in out  # its own system prompt: unchanged


def test_wrong_eos_fails(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (saved / "generation_config.json").write_text(json.dumps({"eos_token_id": [0]}))
    assert main(["verify-export", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "ends an assistant turn with '<|im_end|>' (id 2)" in out
    assert "eos_token_id [0] does not stop there" in out


def test_training_template_given(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--template``: compare the folder with the template the run trained with."""
    other = tmp_path / "trained.jinja"
    other.write_text(
        (saved / "chat_template.jinja").read_text().replace("<|im_end|>' + '\n", "<|im_end|>")
    )
    assert main(["verify-export", str(saved), "--template", str(other)]) == 1
    assert "conversation 'plain-system': token" in capsys.readouterr().out


def test_user_conversations_and_usage_errors(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "convs.jsonl"
    rows.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            }
        )
        + "\n"
    )
    assert main(["verify-export", str(saved), "--conversations", str(rows)]) == 0
    assert "identical on 1 conversations" in capsys.readouterr().out
    assert main(["verify-export", str(tmp_path / "nope")]) == 2
    assert main(["verify-export", str(saved), "--conversations", str(tmp_path / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _vocab_gguf(
    folder: Path, path: Path, template: str | None = None, eos: int | None = None
) -> Path:
    """A vocabulary-only GGUF of ``folder``'s tokenizer as tunesmith's GGUF export lays the
    fields out (``hf_tokenizer_vocab``), optionally with another template or EOS id."""
    gguf = pytest.importorskip("gguf")
    from tunesmith.models.gguf_export import hf_tokenizer_vocab

    vocab = hf_tokenizer_vocab(folder, 49152)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id if eos is None else eos)
    writer.add_chat_template(template or vocab.chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_template_and_stop_ids(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _vocab_gguf(saved, tmp_path / "good.gguf")
    assert main(["verify-export", str(good), "--reference", str(saved)]) == 0
    captured = capsys.readouterr()
    assert "identical on 43 conversations" in captured.out
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert "llama-cpp-python is not installed" in captured.err
    template = (saved / "chat_template.jinja").read_text().replace("named SmolLM", "named Bob")
    bad = _vocab_gguf(saved, tmp_path / "bad.gguf", template=template, eos=0)
    assert main(["verify-export", str(bad), "--reference", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "conversation 'plain-single': token" in out and "gguf" in out
    assert "eos/eot ids [0] do not stop there" in out
