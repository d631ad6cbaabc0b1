"""Error-table cases for data (issue 12, item 5): files, encodings, formats, columns, splits,
rows, conversations, and the tokenizer's fit to the model.

Each case runs ``tunesmith run finetune`` (or ``dpo``) on the tiny Llama of ``_toys`` with one
planted fault in the data; everything else is valid, so the message is about that fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.error_cases._case import ErrorCase
from tests.error_cases._toys import finetune, write_config

GOOD = {"instruction": "Reverse and shout.", "input": "apple", "output": "ELPPA"}


def _rows(n: int = 16, **changes: Any) -> list[dict[str, Any]]:
    return [dict(GOOD, **changes) for _ in range(n)]


def _jsonl(tmp: Path, lines: list[str], name: str = "data.jsonl") -> str:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _files(tmp: Path, data_files: Any, **over: Any) -> list[str]:
    """finetune with ``dataset.data_files`` (and other dataset keys) set."""
    keys = {"dataset.data_files": data_files, **{f"dataset.{k}": v for k, v in over.items()}}
    return finetune(tmp, **keys)


def _non_utf8(tmp: Path) -> list[str]:
    lines = [json.dumps(GOOD).encode()] * 2 + [json.dumps(dict(GOOD, input="caf*")).encode()]
    lines[2] = lines[2].replace(b"caf*", b"caf\xe9")  # latin-1 e-acute
    (tmp / "latin1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return _files(tmp, str(tmp / "latin1.jsonl"))


def _malformed_jsonl(tmp: Path) -> list[str]:
    good = json.dumps(GOOD)
    return _files(tmp, _jsonl(tmp, [good, good, '{"instruction": "x", "output": '] + [good] * 3))


def _malformed_json(tmp: Path) -> list[str]:
    rows = ",\n".join(json.dumps(r) for r in _rows(6))
    text = "[\n" + rows.replace('"ELPPA"},\n', '"ELPPA"}\n', 2) + "\n]\n"
    (tmp / "rows.json").write_text(text)  # no comma after the first two rows
    return _files(tmp, str(tmp / "rows.json"))


def _jsonl_array_line(tmp: Path) -> list[str]:
    good = json.dumps(GOOD)
    return _files(tmp, _jsonl(tmp, [good, '["Reverse and shout.", "apple", "ELPPA"]', good]))


def _mixed_types(tmp: Path) -> list[str]:
    rows = [json.dumps(GOOD), json.dumps(dict(GOOD, output=12345)), json.dumps(GOOD)]
    return _files(tmp, _jsonl(tmp, rows))


def _csv_unclosed_quote(tmp: Path) -> list[str]:
    (tmp / "rows.csv").write_text(
        'instruction,input,output\nshout,apple,ELPPA\nshout,"river,REVIR\n'
    )
    return _files(tmp, str(tmp / "rows.csv"), source="csv")


def _csv_header_only(tmp: Path) -> list[str]:
    (tmp / "rows.csv").write_text("instruction,input,output\n")
    return _files(tmp, str(tmp / "rows.csv"), source="csv")


def _not_parquet(tmp: Path) -> list[str]:
    (tmp / "rows.parquet").write_bytes(b"PAR1" + b"\x00" * 40 + b"not really parquet")
    return _files(tmp, str(tmp / "rows.parquet"), source="parquet")


def _empty_file(tmp: Path) -> list[str]:
    (tmp / "empty.jsonl").write_text("")
    return _files(tmp, str(tmp / "empty.jsonl"))


def _folder(tmp: Path) -> list[str]:
    (tmp / "shards").mkdir()
    (tmp / "shards" / "part-0.json").write_text(json.dumps(_rows()))
    return _files(tmp, "shards")


def _missing_column(tmp: Path) -> list[str]:
    rows = [{"instruction": "Reverse.", "question": "apple", "answer": "ELPPA"}] * 8
    (tmp / "qa.json").write_text(json.dumps(rows))
    return _files(tmp, str(tmp / "qa.json"))


def _null_value(tmp: Path) -> list[str]:
    rows = _rows(8)
    rows[5] = dict(GOOD, output=None)
    (tmp / "rows.json").write_text(json.dumps(rows))
    return _files(tmp, str(tmp / "rows.json"))


def _all_empty(tmp: Path) -> list[str]:
    (tmp / "rows.json").write_text(json.dumps(_rows(12, output="")))
    return _files(tmp, str(tmp / "rows.json"))


def _all_truncated(tmp: Path) -> list[str]:
    (tmp / "rows.json").write_text(json.dumps(_rows(12, input="a long prompt " * 20)))
    return finetune(
        tmp, **{"dataset.data_files": str(tmp / "rows.json"), "tokenizer.max_seq_len": 64}
    )


def _chat(tmp: Path, conversations: list[Any], style: str = "openai") -> list[str]:
    column = "messages" if style == "openai" else "conversations"
    (tmp / "chat.json").write_text(json.dumps([{column: c} for c in conversations]))
    dataset = {
        "_component_": "tunesmith.datasets.chat_dataset",
        "source": "json",
        "data_files": str(tmp / "chat.json"),
        "conversation_column": column,
        "conversation_style": style,
        "split": "train",
    }
    return finetune(tmp, dataset=dataset)


_TALK = [{"role": "user", "content": "Shout apple."}, {"role": "assistant", "content": "APPLE"}]


def _bad_role(tmp: Path) -> list[str]:
    bad = [{"role": "user", "content": "Shout apple."}, {"role": "bot", "content": "APPLE"}]
    return _chat(tmp, [_TALK, _TALK, bad, _TALK])


def _tools_without_template_support(tmp: Path) -> list[str]:
    """Tool-call rows with SmolLM2's tokenizer (its official template has no tool support)."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(tmp / "tokenizer.json"))
    call = {"type": "function", "function": {"name": "shout", "arguments": {"word": "apple"}}}
    tool_row = [
        {"role": "user", "content": "Shout apple."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "APPLE"},
        {"role": "assistant", "content": "APPLE"},
    ]
    return [
        *_chat(tmp, [_TALK, tool_row]),
        "tokenizer._component_=tunesmith.models.smollm2.smollm2_tokenizer",
        f"tokenizer.path={tmp / 'tokenizer.json'}",
    ]


def _two_user_turns(tmp: Path) -> list[str]:
    bad = [{"role": "user", "content": "Shout"}, {"role": "user", "content": "apple"}]
    return _chat(tmp, [_TALK, bad])


def _sharegpt_from(tmp: Path) -> list[str]:
    good = [{"from": "human", "value": "Shout apple."}, {"from": "gpt", "value": "APPLE"}]
    bad = [{"from": "human", "value": "Shout apple."}, {"from": "model", "value": "APPLE"}]
    return _chat(tmp, [good, bad], style="sharegpt")


def _wrong_style(tmp: Path) -> list[str]:
    args = _chat(tmp, [_TALK])
    return [*args, "dataset.conversation_style=alpaca"]


def _text_column(tmp: Path) -> list[str]:
    (tmp / "docs.jsonl").write_text("\n".join(json.dumps({"body": "some text"}) for _ in range(4)))
    dataset = {
        "_component_": "tunesmith.datasets.text_completion_dataset",
        "source": "json",
        "data_files": str(tmp / "docs.jsonl"),
    }
    return finetune(tmp, dataset=dataset)


def _vocab_mismatch(tmp: Path) -> list[str]:
    from tests.recipes._recipe_toys import write_tiny_llama

    write_tiny_llama(tmp / "model", vocab_size=200)  # the byte tokenizer's ids reach 258
    return finetune(tmp)


def _dpo_on_instruct_rows(tmp: Path) -> list[str]:
    write_config(tmp)  # model + instruct data
    dataset = {
        "_component_": "torchtune.datasets.preference_dataset",
        "source": "json",
        "data_files": str(tmp / "data.json"),
    }
    loss = {"_component_": "torchtune.rlhf.loss.DPOLoss", "beta": 0.1}
    cfg = write_config(tmp, recipe="dpo", dataset=dataset, loss=loss)
    return ["run", "dpo", "--config", str(cfg)]


CASES = [
    ErrorCase(
        "data file missing",
        "data",
        lambda tmp: _files(tmp, str(tmp / "nope.json")),
        r"data file '.*nope\.json' does not exist \(dataset\.data_files, working directory .*\): "
        r"fix the dataset\.data_files path",
    ),
    ErrorCase(
        "data_files glob matching nothing",
        "data",
        lambda tmp: _files(tmp, str(tmp / "shards" / "*.jsonl")),
        r"data_files pattern '.*\*\.jsonl' matches no file \(dataset\.data_files",
    ),
    ErrorCase(
        "data_files naming a folder",
        "data",
        _folder,
        r"data_files entry 'shards' is a folder \(dataset\.data_files\): name the files in it, "
        r"e\.g\. data_files: shards/\*\.json",
    ),
    ErrorCase(
        "data file not UTF-8",
        "data",
        _non_utf8,
        r"data file is not UTF-8 text \(byte 0xe9\) \(.*latin1\.jsonl, line 3, byte offset \d+\): "
        r"re-save the file as UTF-8",
    ),
    ErrorCase(
        "malformed JSON Lines",
        "data",
        _malformed_jsonl,
        r"malformed JSON \(.*data\.jsonl, line 3, column \d+\): .*fix or delete the line",
    ),
    ErrorCase(
        "malformed JSON document",
        "data",
        _malformed_json,
        r"malformed JSON \(.*rows\.json, line 3, column 1\): Expecting ',' delimiter; fix "
        r"the file",
    ),
    ErrorCase(
        "JSON Lines row that is not an object",
        "data",
        _jsonl_array_line,
        r"JSON line is a list, not an object \(.*data\.jsonl, line 2\)",
    ),
    ErrorCase(
        "column changing type between rows",
        "data",
        _mixed_types,
        r"row 1, column 'output': expected a string, got int: 12345 \(dataset .*data\.jsonl\)",
    ),
    ErrorCase(
        "CSV with an unclosed quote",
        "data",
        _csv_unclosed_quote,
        r"malformed CSV \(.*rows\.csv\): .*EOF inside string.*fix the file",
    ),
    ErrorCase(
        "CSV with a header and no rows",
        "data",
        _csv_header_only,
        r"the dataset has no rows \(split 'train'\) \(dataset .*rows\.csv\)",
    ),
    ErrorCase(
        "parquet file that is not parquet",
        "data",
        _not_parquet,
        r"not a readable parquet file \(.*rows\.parquet\): .*re-export the file",
    ),
    ErrorCase(
        "empty data file",
        "data",
        _empty_file,
        r"data file is empty \(.*empty\.jsonl\): add rows to it",
    ),
    ErrorCase(
        "split that does not exist",
        "data",
        lambda tmp: finetune(tmp, **{"dataset.split": "validation"}),
        r"split 'validation' does not exist \(dataset\.split, dataset .*data\.json\): set "
        r"dataset\.split to one of \['train'\]",
    ),
    ErrorCase(
        "misspelt dataset source",
        "data",
        lambda tmp: finetune(tmp, **{"dataset.source": "jsonl"}),
        r"dataset source 'jsonl' is not a file format \(dataset\.source\): did you mean "
        r"source: json\?",
    ),
    ErrorCase(
        "hub dataset offline",
        "data",
        lambda tmp: finetune(
            tmp, **{"dataset.source": "nobody/no-such-data", "dataset.data_files": None}
        ),
        r"dataset 'nobody/no-such-data' .*\(dataset\.source\): .*point the config at a local file",
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    ),
    ErrorCase(
        "missing column",
        "data",
        _missing_column,
        r"column 'input': missing column; the dataset has columns \['instruction', 'question', "
        r"'answer'\] \(dataset .*qa\.json\): set dataset\.column_map\.input to the column",
    ),
    ErrorCase(
        "null value in a row",
        "data",
        _null_value,
        r"row 5, column 'output': value is null \(dataset .*rows\.json\): fix or drop the row",
    ),
    ErrorCase(
        "every row empty",
        "data",
        _all_empty,
        r"none of the 12 rows has a trained token \(12 empty\) \(dataset .*rows\.json\): fill in "
        r"or drop the empty rows",
    ),
    ErrorCase(
        "every row cut away by max_seq_len",
        "data",
        _all_truncated,
        r"none of the 12 rows has a trained token \(12 cut away by truncation at max_seq_len=64\)"
        r".*raise tokenizer\.max_seq_len \(now 64\)",
    ),
    ErrorCase(
        "chat message with a bad role",
        "data",
        _bad_role,
        r"row 2, column 'messages': message 1: message role 'bot' is not one of \[.*\] "
        r"\(dataset .*chat\.json\): fix or drop the row",
    ),
    ErrorCase(
        "ShareGPT turn with an unknown 'from'",
        "data",
        _sharegpt_from,
        r"row 1, column 'conversations': message 1 has 'from'='model'",
    ),
    ErrorCase(
        "tool calls for a family tokenizer whose template has no tool support",
        "data",
        _tools_without_template_support,
        r"row 1.*message 1 has tool_calls, but SmolLM2's official chat "
        r"template has no tool support; tokenize it with a chat template that does: "
        r"tokenizer\._component_=tunesmith\.data\.tokenizers\.HuggingFaceModelTokenizer",
    ),
    ErrorCase(
        "conversation with two user turns in a row",
        "data",
        _two_user_turns,
        r"row 1: invalid conversation: Two consecutive user messages at index 1 and 0 in messages "
        r"\(dataset .*chat\.json\)",
    ),
    ErrorCase(
        "unknown conversation_style",
        "data",
        _wrong_style,
        r"dataset\.conversation_style='alpaca' is not a conversation style; use 'sharegpt'",
    ),
    ErrorCase(
        "text column missing",
        "data",
        _text_column,
        r"column 'text': missing column; the dataset has columns \['body'\] .*set dataset\.column "
        r"to the column that holds it \(e\.g\. dataset\.column=body\)",
    ),
    ErrorCase(
        "preference recipe on rows without chosen/rejected",
        "data",
        _dpo_on_instruct_rows,
        r"column 'chosen': missing column; the dataset has columns \[.*'output'\] .*set "
        r"dataset\.column_map\.chosen",
    ),
    ErrorCase(
        "tokenizer ids beyond the model's vocabulary",
        "data",
        _vocab_mismatch,
        r"token id 258 \(from the tokenized data\) does not fit the model's vocabulary of 200 ids "
        r"\(tokenizer _recipe_toys\.ByteChatTokenizer, model checkpointer\.checkpoint_dir=.*\): "
        r"use the tokenizer that belongs to the model",
    ),
]
