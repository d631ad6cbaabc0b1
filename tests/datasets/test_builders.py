"""Every builder loads its torchtune sample file (or one written here in the same format)
and yields the exact tokens and labels; references are the files' own fields (e.g. the
Alpaca ``text`` column written by the Alpaca authors) encoded byte by byte."""

from __future__ import annotations

import json

import pytest

from tests.datasets.byte_tokenizer import ByteTokenizer, byte_ids
from tunesmith import datasets as tds

IGNORE = -100


def _masked(ids: list[int]) -> list[int]:
    return [IGNORE] * len(ids)


def test_alpaca_matches_reference_text_column(assets, tokenizer):
    path = assets / "torchtune_tests" / "alpaca_tiny.json"
    rows = json.loads(path.read_text())
    ds = tds.alpaca_dataset(tokenizer, source="json", data_files=str(path))
    assert len(ds) == len(rows) == 100
    for i in (0, 1, 7):
        # the Alpaca authors' "text" column is exactly prompt + response
        expected = [1] + byte_ids(rows[i]["text"]) + [2]
        assert ds[i]["tokens"] == expected
        assert ds[i]["labels"] == expected  # train_on_input=True by default, as in torchtune
    with_input = next(i for i, r in enumerate(rows) if r["input"])
    assert ds[with_input]["tokens"] == [1] + byte_ids(rows[with_input]["text"]) + [2]


def test_alpaca_cleaned_train_on_input_false_masks_prompt(assets, tokenizer):
    path = assets / "torchtune_tests" / "alpaca_tiny.json"
    row = json.loads(path.read_text())[0]
    ds = tds.alpaca_cleaned_dataset(
        tokenizer, source="json", data_files=str(path), train_on_input=False
    )
    prompt = row["text"][: len(row["text"]) - len(row["output"])]
    sample = ds[0]
    assert sample["tokens"] == [1] + byte_ids(prompt) + byte_ids(row["output"]) + [2]
    assert sample["labels"] == [IGNORE] + _masked(byte_ids(prompt)) + byte_ids(row["output"]) + [2]


def test_instruct_dataset_column_map(assets, tokenizer):
    path = assets / "torchtune_tests" / "instruct_tiny.json"
    ds = tds.instruct_dataset(
        tokenizer,
        source="json",
        data_files=str(path),
        column_map={"input": "instruction", "output": "response"},
        new_system_prompt="Be terse.",
    )
    assert len(ds) == 2
    sys_ids, user_ids = byte_ids("Be terse."), byte_ids("What time is it in London?")
    out_ids = byte_ids("It is 10:00 AM in London")
    assert ds[0]["tokens"] == [1] + sys_ids + user_ids + out_ids + [2]
    assert ds[0]["labels"] == [IGNORE] + _masked(sys_ids + user_ids) + out_ids + [2]


@pytest.mark.parametrize("style", ["sharegpt", "openai"])
def test_chat_dataset(assets, tmp_path, tokenizer, style):
    path = assets / "torchtune_tests" / "chat_tiny.json"
    if style == "openai":  # same conversation, OpenAI layout
        role = {"system": "system", "human": "user", "gpt": "assistant"}
        convs = json.loads(path.read_text())
        rows = [
            {
                "dialogue": [
                    {"role": role[t["from"]], "content": t["value"]} for t in r["conversations"]
                ]
            }
            for r in convs
        ]
        path = tmp_path / "chat_openai.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows))
        column = "dialogue"
    else:
        column = "conversations"
    ds = tds.chat_dataset(
        tokenizer,
        source="json",
        data_files=str(path),
        conversation_column=column,
        conversation_style=style,
    )
    turns = [
        "You are an AI assistant.",
        "What is the meaning of life?",
        "The meaning of life is 42.",
        "That's ridiculous.",
        "I agree.",
    ]
    ids = [byte_ids(t) for t in turns]
    sample = ds[0]
    assert sample["tokens"] == [1] + sum(ids, []) + [2]
    expected_labels = [IGNORE] + _masked(ids[0] + ids[1]) + ids[2] + _masked(ids[3]) + ids[4] + [2]
    assert sample["labels"] == expected_labels


def test_chat_dataset_rejects_unknown_style(assets, tokenizer):
    with pytest.raises(ValueError, match="conversation_style"):
        tds.chat_dataset(
            tokenizer,
            source="json",
            data_files=str(assets / "torchtune_tests" / "chat_tiny.json"),
            conversation_column="conversations",
            conversation_style="alpaca",
        )


def test_slimorca_samsum_grammar(assets, tmp_path, tokenizer):
    chat = assets / "torchtune_tests" / "chat_tiny.json"
    ds = tds.slimorca_dataset(tokenizer, source="json", data_files=str(chat), train_on_input=True)
    assert ds[0]["labels"] == ds[0]["tokens"]
    samsum = tmp_path / "samsum.json"
    samsum.write_text(json.dumps([{"id": "1", "dialogue": "A: hi\nB: yo", "summary": "Greeting."}]))
    s = tds.samsum_dataset(tokenizer, source="json", data_files=str(samsum))[0]
    assert s["tokens"] == [1] + byte_ids("A: hi\nB: yo") + byte_ids("Greeting.") + [2]
    assert s["labels"] == [IGNORE] + _masked(byte_ids("A: hi\nB: yo")) + byte_ids("Greeting.") + [2]
    grammar = tmp_path / "grammar.csv"
    grammar.write_text("input,output\nshe go home,she goes home\n")
    g = tds.grammar_dataset(tokenizer, source="csv", data_files=str(grammar))[0]
    assert g["tokens"] == [1] + byte_ids("she go home") + byte_ids("she goes home") + [2]


def test_text_completion_wikitext_cnn(tmp_path):
    tok = ByteTokenizer(max_seq_len=8)
    text = tmp_path / "pages.jsonl"
    text.write_text(json.dumps({"page": "abcdefghij"}) + "\n" + json.dumps({"page": "xy"}) + "\n")
    ds = tds.wikitext_dataset(tok, source="json", data_files=str(text))
    # BOS + text + EOS truncated to max_seq_len - 1 tokens, as torchtune does
    assert ds[0] == {"tokens": [1] + byte_ids("abcdef"), "labels": [1] + byte_ids("abcdef")}
    assert ds[1]["tokens"] == [1] + byte_ids("xy") + [2]
    articles = tmp_path / "cnn.parquet"
    import datasets

    datasets.Dataset.from_list([{"article": "news", "highlights": "n"}]).to_parquet(str(articles))
    cnn = tds.cnn_dailymail_articles_dataset(tok, source="parquet", data_files=str(articles))
    assert cnn[0]["tokens"] == [1] + byte_ids("news") + [2]
    plain = tmp_path / "plain.txt"
    plain.write_text("line one\nline two\n")
    txt = tds.text_completion_dataset(
        ByteTokenizer(), source="text", data_files=str(plain), add_eos=False
    )
    assert [txt[i]["tokens"] for i in range(2)] == [
        [1] + byte_ids("line one"),
        [1] + byte_ids("line two"),
    ]


def test_text_completion_packed_splits_across_packs(tmp_path):
    tok = ByteTokenizer(max_seq_len=6)
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"text": "abcdefgh"}, {"text": "ij"}]))
    ds = tds.text_completion_dataset(tok, source="json", data_files=str(path), packed=True)
    assert isinstance(ds, tds.PackedDataset)
    # samples: [1 a b c d e] (truncated to 5 -> [1 a b c d]) and [1 i j 2]
    assert ds[0]["tokens"].tolist() == [1] + byte_ids("abcd") + [1]
    assert ds[1]["tokens"].tolist() == byte_ids("ij") + [2, 0, 0, 0]
    assert ds[1]["input_pos"].tolist()[:3] == [0, 1, 2]


def test_preference_datasets(assets, tokenizer):
    hh = tds.hh_rlhf_helpful_dataset(
        tokenizer, source="json", data_files=str(assets / "torchtune_tests" / "hh_rlhf_tiny.json")
    )
    q = byte_ids("What do I do when I have a hole in my trousers?")
    item = hh[0]
    assert item["chosen_input_ids"] == [1] + q + byte_ids("Fix the hole.") + [2]
    assert item["chosen_labels"] == [IGNORE] + _masked(q) + byte_ids("Fix the hole.") + [2]
    assert item["rejected_input_ids"] == [1] + q + byte_ids("Take them off.") + [2]
    path = assets / "torchtune_tests" / "stack_exchange_paired_tiny.json"
    rows = json.loads(path.read_text())
    se = tds.stack_exchange_paired_dataset(tokenizer, source="json", data_files=str(path))
    assert len(se) == 25
    item = se[3]
    assert item["chosen_input_ids"] == [1] + byte_ids(
        rows[3]["question"] + rows[3]["response_j"]
    ) + [2]
    assert item["rejected_labels"] == [IGNORE] + _masked(byte_ids(rows[3]["question"])) + byte_ids(
        rows[3]["response_k"]
    ) + [2]
    with pytest.raises(ValueError, match="packed"):
        tds.preference_dataset(
            tokenizer,
            source="json",
            data_files=str(path),
            packed=True,
            column_map={"chosen": "response_j", "rejected": "response_k"},
        )


def test_packed_builder_and_concat(assets):
    tok = ByteTokenizer(max_seq_len=1024)
    path = str(assets / "torchtune_tests" / "alpaca_tiny.json")
    unpacked = tds.alpaca_dataset(tok, source="json", data_files=path)
    packed = tds.alpaca_dataset(tok, source="json", data_files=path, packed=True)
    assert packed.packed and len(packed) < len(unpacked)
    total = sum(len(unpacked[i]["tokens"]) for i in range(len(unpacked)))
    assert sum(
        int((packed[i]["labels"] != IGNORE).sum()) for i in range(len(packed))
    ) == total - sum(unpacked[i]["labels"].count(IGNORE) for i in range(len(unpacked)))
    both = tds.ConcatDataset([unpacked, unpacked])
    assert len(both) == 200 and both[150] == unpacked[50] and not both.packed
    assert both.sample_lengths().tolist() == 2 * [len(unpacked[i]["tokens"]) for i in range(100)]
    with pytest.raises(ValueError, match="mix packed and unpacked"):
        tds.ConcatDataset([unpacked, packed])


def test_packed_needs_tokenizer_max_seq_len(assets, tokenizer):
    with pytest.raises(ValueError, match="tokenizer.max_seq_len"):
        tds.alpaca_dataset(
            tokenizer,
            source="json",
            data_files=str(assets / "torchtune_tests" / "alpaca_tiny.json"),
            packed=True,
        )


def test_local_path_as_source_and_missing_file(assets, tokenizer, tmp_path):
    ds = tds.alpaca_dataset(tokenizer, source=str(assets / "torchtune_tests" / "alpaca_tiny.json"))
    assert len(ds) == 100
    with pytest.raises(FileNotFoundError, match="data_files"):
        tds.alpaca_dataset(tokenizer, source="json", data_files=str(tmp_path / "nope.json"))


def test_packed_dataset_over_any_sample_list():
    samples = [{"tokens": [1, 2, 3], "labels": [-100, 2, 3]}, {"tokens": [4, 5], "labels": [4, 5]}]
    packed = tds.PackedDataset(samples, max_seq_len=4, padding_idx=0)
    assert len(packed) == 2 and packed.packed
    assert packed[0]["tokens"].tolist() == [1, 2, 3, 0]
    assert packed[1]["labels"].tolist() == [4, 5, -100, -100]
    assert packed[1]["input_pos"].tolist() == [0, 1, 2, 3]


def test_unreachable_hub_names_the_fix(monkeypatch, tokenizer):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'tatsu-lab/alpaca' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="source: json.*data_files"):
        tds.alpaca_dataset(tokenizer)
