"""Data problems are one-line ``DataError``s naming file, line, row and column; rows with
nothing to train on are left out at build time (counted, warned), an error when none is left;
token ids are checked against the model's vocabulary (issue 12, item 5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.datasets.byte_tokenizer import ByteTokenizer
from tunesmith import datasets as tds
from tunesmith.config import UserError
from tunesmith.data import DataError, DataRowError, StatefulDistributedSampler
from tunesmith.datasets._checks import check_token_ids

GOOD = {"input": "apple", "output": "ELPPA"}


def _json(tmp_path: Path, rows: list, name: str = "rows.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return str(path)


def _instruct(tok, path: str, **kwargs):
    return tds.instruct_dataset(tok, source="json", data_files=path, **kwargs)


# ------------------------------------------------------------------------------ reading files
def test_non_utf8_names_line_and_byte_offset(tmp_path, tokenizer):
    lines = [json.dumps(GOOD).encode()] * 3
    lines[1] = lines[1].replace(b"apple", b"caf\xe9")
    (tmp_path / "latin1.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as info:
        _instruct(tokenizer, str(tmp_path / "latin1.jsonl"))
    offset = len(lines[0]) + 1 + lines[1].index(b"\xe9")
    assert f"latin1.jsonl, line 2, byte offset {offset}" in str(info.value)
    assert "UTF-8" in str(info.value) and isinstance(info.value, UserError)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"input": "a", "output": "b"}\n{"input": "a", "output": \n', "line 2"),
        ('[{"input": "a", "output": "b"}\n {"input": "a" "output": "b"}]', "line 2, column 2"),
    ],
)
def test_malformed_json_names_line(tmp_path, tokenizer, text, where):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"malformed JSON \({path}, {where}"):
        _instruct(tokenizer, str(path))


def test_unreadable_file_is_named(tmp_path, tokenizer, monkeypatch):
    path = Path(_json(tmp_path, [GOOD]))
    real_open = Path.open

    def deny(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(DataError, match=rf"cannot read data file \({path}\): Permission denied"):
        _instruct(tokenizer, str(path))


def test_missing_file_glob_and_folder(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="'nope.json' does not exist"):
        _instruct(tokenizer, "nope.json")
    with pytest.raises(FileNotFoundError, match=r"pattern .*\*\.jsonl' matches no file"):
        _instruct(tokenizer, str(tmp_path / "*.jsonl"))
    (tmp_path / "shards").mkdir()
    with pytest.raises(DataError, match=r"is a folder .*data_files: .*shards/\*\.json"):
        _instruct(tokenizer, str(tmp_path / "shards"))


def test_empty_files_and_empty_splits(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"data file is empty \(.*empty\.jsonl\)"):
        _instruct(tokenizer, str(tmp_path / "empty.jsonl"))
    (tmp_path / "rows.csv").write_text("input,output\n")
    with pytest.raises(DataError, match=r"the dataset has no rows .*rows\.csv"):
        tds.instruct_dataset(tokenizer, source="csv", data_files=str(tmp_path / "rows.csv"))
    path = _json(tmp_path, [GOOD] * 3)
    with pytest.raises(DataError, match=r"filter_fn removed every row"):
        _instruct(tokenizer, path, filter_fn=lambda row: False)
    with pytest.raises(DataError, match=r"split 'test' does not exist .*one of \['train'\]"):
        _instruct(tokenizer, path, split="test")


def test_csv_and_parquet_problems_name_the_file(tmp_path, tokenizer):
    good = tmp_path / "good.csv"
    good.write_text("input,output\napple,ELPPA\n")
    bad = tmp_path / "bad.csv"
    bad.write_text('input,output\napple,"ELPPA\n')
    with pytest.raises(DataError, match=rf"malformed CSV \({bad}\)"):
        tds.instruct_dataset(tokenizer, source="csv", data_files=[str(good), str(bad)])
    junk = tmp_path / "rows.parquet"
    junk.write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(DataError, match=rf"not a readable parquet file \({junk}\)"):
        tds.instruct_dataset(tokenizer, source="parquet", data_files=str(junk))


def test_misspelt_source_and_datasets_internals(tmp_path, tokenizer, monkeypatch):
    path = _json(tmp_path, [GOOD])
    with pytest.raises(DataError, match=r"source 'jsn' is not a file format.*source: json\?"):
        tds.instruct_dataset(tokenizer, source="jsn", data_files=path)
    import datasets

    def broken(*args, **kwargs):
        try:
            raise OSError("disk quota exceeded while writing the arrow cache")
        except OSError as e:
            raise datasets.exceptions.DatasetGenerationError("An error occurred") from e

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(DataError) as info:
        _instruct(tokenizer, path)
    assert str(info.value).startswith("could not load the dataset: disk quota exceeded")
    assert path in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- columns
def test_missing_column_names_columns_and_key(tmp_path, tokenizer):
    path = _json(tmp_path, [{"question": "q", "answer": "a"}] * 4)
    ds = _instruct(tokenizer, path)
    with pytest.raises(DataRowError) as info:
        ds.drop_untrained_rows()
    message = str(info.value)
    assert "column 'input': missing column" in message and "['question', 'answer']" in message
    assert path in message and "set dataset.column_map.input" in message
    chat = tds.chat_dataset(
        tokenizer,
        source="json",
        data_files=path,
        conversation_column="dialog",
        conversation_style="openai",
    )
    with pytest.raises(DataRowError, match=r"set dataset\.conversation_column to"):
        chat.drop_untrained_rows()


def test_preference_missing_side_and_bad_role(tmp_path, tokenizer):
    talk = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]
    path = _json(tmp_path, [{"chosen": talk}] * 3)
    ds = tds.preference_dataset(tokenizer, source="json", data_files=path)
    with pytest.raises(DataRowError, match=r"column 'rejected'.*set dataset\.column_map\.rejected"):
        ds.drop_untrained_rows()
    bad = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "HI"}]
    path = _json(tmp_path, [{"chosen": talk, "rejected": talk}, {"chosen": talk, "rejected": bad}])
    ds = tds.preference_dataset(tokenizer, source="json", data_files=path)
    with pytest.raises(DataRowError, match=r"row 1, column 'rejected': message 1: .*'robot'"):
        ds.drop_untrained_rows()


def test_wrong_conversation_style_names_the_key(tmp_path, tokenizer):
    from tunesmith.config import ConfigError

    with pytest.raises(ConfigError, match="conversation_style='alpaca'") as info:
        tds.chat_dataset(
            tokenizer,
            source="json",
            data_files=_json(tmp_path, [GOOD]),
            conversation_column="x",
            conversation_style="alpaca",
        )
    assert info.value.key == "dataset.conversation_style"


# ------------------------------------------------------------------------ untrained rows
def _mixed_rows() -> list[dict]:
    rows = [dict(GOOD, input=f"word{i}") for i in range(20)]
    rows[3] = dict(GOOD, output="")  # empty response
    rows[7] = dict(GOOD, output="  ")  # blank response
    rows[11] = dict(GOOD, input="x" * 80)  # the prompt fills max_seq_len
    return rows


def test_untrained_rows_are_skipped_with_one_warning(tmp_path, caplog):
    path = _json(tmp_path, _mixed_rows())
    tok = ByteTokenizer(max_seq_len=40)
    ds = _instruct(tok, path)
    assert len(ds) == 20  # nothing dropped until the check runs
    with caplog.at_level(logging.WARNING):
        ds.drop_untrained_rows()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("skipped 3 of 20 rows with no trained token (rows 3, 7, 11;")
    assert "2 empty, 1 cut away by truncation at max_seq_len=40" in warnings[0]
    assert len(ds) == 17 and ds.num_skipped_rows == 3
    kept = [i for i in range(20) if i not in (3, 7, 11)]
    reference = _instruct(tok, path)
    for position, row in enumerate(kept):
        assert ds[position] == reference[row]
        assert any(label != -100 for label in ds[position]["labels"][1:])
    assert ds.sample_lengths().tolist() == [len(reference[i]["tokens"]) for i in kept]
    ds.drop_untrained_rows()  # idempotent
    assert len(ds) == 17


def test_every_row_untrained_is_an_error(tmp_path, tokenizer):
    path = _json(tmp_path, [dict(GOOD, output="")] * 5)
    with pytest.raises(DataError, match=r"none of the 5 rows has a trained token \(5 empty\)"):
        _instruct(tokenizer, path).drop_untrained_rows()
    path = _json(tmp_path, [dict(GOOD, input="x" * 50)] * 3, name="long.json")
    with pytest.raises(DataError, match=r"3 cut away by truncation at max_seq_len=20\)"):
        _instruct(ByteTokenizer(max_seq_len=20), path).drop_untrained_rows()


def test_all_masked_rows_are_named_as_such(tmp_path, tokenizer):
    talk = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "result"}]
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]
    path = _json(tmp_path, [{"messages": good}, {"messages": talk}])
    ds = tds.chat_dataset(
        tokenizer,
        source="json",
        data_files=path,
        conversation_column="messages",
        conversation_style="openai",
    )
    ds.drop_untrained_rows()
    assert len(ds) == 1 and ds.num_skipped_rows == 1


def test_packed_dataset_packs_only_trained_rows(tmp_path, caplog):
    path = _json(tmp_path, _mixed_rows())
    tok = ByteTokenizer(max_seq_len=40)
    with caplog.at_level(logging.WARNING):
        packed = _instruct(tok, path, packed=True)
    assert any("skipped 3 of 20 rows" in r.getMessage() for r in caplog.records)
    unpacked = _instruct(tok, path)
    unpacked.drop_untrained_rows()
    assert len(packed.ds) == 17
    total = sum(int((packed[i]["tokens"] != 0).sum()) for i in range(len(packed)))
    assert total == int(unpacked.sample_lengths().sum())


def test_generic_packed_samples_without_targets_are_dropped():
    samples = [
        {"tokens": [1, 2, 3], "labels": [-100, 2, 3]},
        {"tokens": [4, 5], "labels": [4, -100]},  # only the first label: no next-token target
        {"tokens": [6, 7], "labels": [6, 7]},
    ]
    packed = tds.PackedDataset(samples, max_seq_len=8, padding_idx=0)
    assert packed[0]["tokens"].tolist() == [1, 2, 3, 6, 7, 0, 0, 0]


def test_preference_pairs_with_an_untrained_side_are_skipped(tmp_path, caplog):
    rows = [{"question": f"q{i}", "response_j": "yes", "response_k": "no"} for i in range(6)]
    rows[1]["response_k"] = ""
    rows[4]["question"] = "long " * 20
    path = _json(tmp_path, rows)
    ds = tds.stack_exchange_paired_dataset(
        ByteTokenizer(max_seq_len=60), source="json", data_files=path
    )
    with caplog.at_level(logging.WARNING):
        ds.drop_untrained_rows()
    message = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert message.startswith("skipped 2 of 6 pairs with no trained token in the chosen or the")
    assert "(rows 1, 4;" in message and "1 empty, 1 cut away by truncation" in message
    assert len(ds) == 4 and ds[1]["chosen_input_ids"] == ds._pair(2)[1]["chosen_input_ids"]
    assert ds.max_token_id() == max(
        max(ds[i]["chosen_input_ids"] + ds[i]["rejected_input_ids"]) for i in range(4)
    )


def test_text_completion_blank_documents_are_skipped(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["one doc", "", "   ", "two"]))
    ds = tds.text_completion_dataset(tokenizer, source="json", data_files=str(path))
    ds.drop_untrained_rows()
    assert len(ds) == 2 and ds[1]["tokens"] == tokenizer.encode("two")


def test_concat_recounts_after_skipping(tmp_path, tokenizer):
    a = _instruct(tokenizer, _json(tmp_path, _mixed_rows()[:8], name="a.json"))
    b = _instruct(tokenizer, _json(tmp_path, [GOOD] * 3, name="b.json"))
    both = tds.ConcatDataset([a, b])
    both.drop_untrained_rows()
    assert len(both) == 6 + 3 and both[6] == b[0]
    assert len(both.samples()) == 9


def test_skipping_is_deterministic_with_the_cache_and_across_ranks(tmp_path):
    """The cache keeps every row; each build (a resumed run, another rank) keeps the same
    rows, so two ranks' samplers split the same kept indices."""
    path = _json(tmp_path, _mixed_rows())
    cache = tmp_path / "cache"
    tok = ByteTokenizer(max_seq_len=40)
    first = _instruct(tok, path)
    first.tokenize_all(cache_dir=cache)
    first.drop_untrained_rows()
    second = _instruct(tok, path)
    second.tokenize_all(cache_dir=cache)  # from the cache: all 20 rows
    assert len(second.tokenize_all()) == 20
    second.drop_untrained_rows()
    assert np.array_equal(first._keep, second._keep)
    rank_rows = []
    for rank in range(2):
        sampler = StatefulDistributedSampler(second, num_replicas=2, rank=rank, seed=3)
        rank_rows.append([second[i]["tokens"] for i in sampler])
    seen = set(map(tuple, rank_rows[0] + rank_rows[1]))  # the sampler pads with repeats
    assert seen == {tuple(first[i]["tokens"]) for i in range(len(first))}
    assert len(rank_rows[0]) == len(rank_rows[1]) == 9


# ------------------------------------------------------------------------------ vocabulary
def test_token_ids_beyond_the_vocabulary(tmp_path, tokenizer):
    ds = _instruct(tokenizer, _json(tmp_path, [GOOD] * 3))
    ds.drop_untrained_rows()
    largest = ds.max_token_id()
    check_token_ids([ds], tokenizer, largest + 1, "m")
    with pytest.raises(DataError) as info:
        check_token_ids([ds], tokenizer, largest, "my-model")
    message = str(info.value)
    assert f"token id {largest} (from the tokenized data)" in message
    assert f"vocabulary of {largest} ids" in message and "ByteTokenizer" in message
    assert "my-model" in message and info.value.key == "tokenizer"

    class PadBeyond(ByteTokenizer):
        pad_id = 10_000

    with pytest.raises(DataError, match=r"token id 10000 \(from tokenizer\.pad_id\)"):
        check_token_ids([ds], PadBeyond(), 300, "m")
