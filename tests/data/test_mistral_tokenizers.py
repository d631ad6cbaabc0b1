"""Mistral Nemo / Mistral Small 3.x / Ministral 3 tokenizer builders (``tokenizer.json`` +
the checkpoint's chat template) equal transformers' ``apply_chat_template`` with the
official templates on every chat corpus row: tools, tool calls and results, reasoning,
system prompts, many turns; rows the template refuses are refused with its message.

No Tekken ``tokenizer.json`` is in the assets: SmolLM2's byte-level BPE vocabulary with
Mistral's control tokens added (``test_chat_corpus.MISTRAL``) stands in for it, the same
vocabulary on both sides. Masks are ``test_chat_corpus``'s reference masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.models.ministral3 import ministral3_tokenizer
from tunesmith.models.mistral import mistral_nemo_tokenizer, mistral_small_tokenizer

from .test_chat_corpus import MISTRAL, _corpus, _ours, _reference, _trained, _vocabulary

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    ("builder", "template"),
    [
        (mistral_nemo_tokenizer, "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
        (mistral_small_tokenizer, "Mistral-Small-3.2-24B-Instruct-2506.jinja"),
        (ministral3_tokenizer, "mistralai-Ministral-3-14B-Reasoning-2512.jinja"),
    ],
)
def test_family_tokenizer_equals_official_template(
    builder, template: str, assets: Path, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer

    source = (assets / "chat_templates" / template).read_text(encoding="utf-8")
    vocab = _vocabulary(assets, "smollm2", tuple(MISTRAL))
    (tmp_path / "tokenizer.json").write_text(vocab, encoding="utf-8")
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": source}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    ours = builder(str(tmp_path / "tokenizer.json"))
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(vocab), bos_token="<s>", eos_token="</s>"
    )
    ref.chat_template = source
    rendered = tool_rows = 0
    for row in _corpus():
        try:
            expected_tokens, expected_mask = _reference(ref, row)
        except Exception as e:  # the official template refuses the row: so do we
            with pytest.raises(ValueError) as info:
                _ours(ours, row)
            assert (str(e).splitlines() or [""])[0] in str(info.value), row["id"]
            assert "\n" not in str(info.value)
            continue
        tokens, mask = _ours(ours, row)
        assert tokens == expected_tokens, (row["id"], ref.decode(tokens))
        assert mask == expected_mask, (
            row["id"],
            _trained(ref, tokens, mask),
            _trained(ref, expected_tokens, expected_mask),
        )
        rendered += 1
        tool_rows += bool(row.get("tools"))
    # all 43 rows render with these three templates (26 with tools)
    assert rendered >= 40, f"{template}: only {rendered} rows rendered"
    assert tool_rows >= 20, f"{template}: only {tool_rows} tool rows rendered"
