"""Bad rows fail with an error naming the row index and the column, in the per-row and the
bulk (packing) paths alike."""

from __future__ import annotations

import json

import pytest

from tests.datasets.byte_tokenizer import ByteTokenizer
from tunesmith import datasets as tds
from tunesmith.data import DataRowError


def _write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


@pytest.mark.parametrize(
    ("bad_row", "column", "what"),
    [
        ({"instruction": "Say hi.", "input": ""}, "output", "null"),  # missing column -> null
        ({"instruction": None, "input": "", "output": "Hi."}, "instruction", "null"),
    ],
)
def test_alpaca_bad_row_names_row_and_column(tmp_path, tokenizer, bad_row, column, what):
    path = _write(tmp_path, [GOOD, GOOD, bad_row, GOOD])
    ds = tds.alpaca_dataset(tokenizer, source="json", data_files=path)
    assert ds[1]["tokens"]
    with pytest.raises(DataRowError, match=rf"row 2, column '{column}'.*{what}") as info:
        ds[2]
    assert info.value.row_index == 2 and info.value.column == column
    assert "filter_fn" in str(info.value) and path in str(info.value)
    packed_tok = ByteTokenizer(max_seq_len=512)
    with pytest.raises(DataRowError, match=rf"row 2, column '{column}'"):
        tds.alpaca_dataset(packed_tok, source="json", data_files=path, packed=True)


def test_non_string_content(tmp_path, tokenizer):
    # in a chat list the content type can differ per message without breaking the arrow schema
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    bad = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}]
    path = _write(tmp_path, [{"conversations": conv}, {"conversations": bad}])
    ds = tds.chat_dataset(
        tokenizer,
        source="json",
        data_files=path,
        conversation_column="conversations",
        conversation_style="sharegpt",
    )
    with pytest.raises(DataRowError, match=r"row 1, column 'conversations'.*message 1") as info:
        ds[1]
    assert info.value.row_index == 1
    path = _write(tmp_path, [{"text": "fine"}, {"text": 7}], name="numbers.json")
    with pytest.raises(DataRowError, match=r"row 1, column 'text': expected a string, got int"):
        tds.text_completion_dataset(tokenizer, source="json", data_files=path)[1]


def test_text_completion_wrong_column(tmp_path, tokenizer):
    path = _write(tmp_path, [{"body": "a"}])
    ds = tds.text_completion_dataset(tokenizer, source="json", data_files=path)
    with pytest.raises(DataRowError, match=r"row 0, column 'text'.*missing column.*body"):
        ds[0]


def test_preference_null_names_row(tmp_path, tokenizer):
    good = {"question": "q", "response_j": "a", "response_k": "b"}
    path = _write(tmp_path, [good, {"question": "q", "response_j": None, "response_k": "b"}])
    ds = tds.stack_exchange_paired_dataset(tokenizer, source="json", data_files=path)
    assert ds[0]["chosen_input_ids"]
    with pytest.raises(DataRowError, match=r"row 1, column 'response_j'.*null"):
        ds[1]


def test_unknown_column_map_key(tmp_path, tokenizer):
    path = _write(tmp_path, [GOOD])
    with pytest.raises(ValueError, match="column_map"):
        tds.instruct_dataset(tokenizer, source="json", data_files=path, column_map={"prompt": "x"})
