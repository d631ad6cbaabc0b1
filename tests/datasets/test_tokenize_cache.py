"""Bulk tokenization: equals per-row tokenization, in worker processes too; the disk cache
is reused on a second run and invalidated by changes to the data, tokenizer or settings."""

from __future__ import annotations

import json
import os

import numpy as np

from tests.datasets.byte_tokenizer import ByteTokenizer
from tunesmith import datasets as tds


class CountingTokenizer(ByteTokenizer):
    def __init__(self, max_seq_len=None):
        super().__init__(max_seq_len)
        self.calls = 0

    def __call__(self, sample):
        self.calls += 1
        return super().__call__(sample)


def _alpaca_copy(assets, tmp_path, repeat=1):
    rows = json.loads((assets / "torchtune_tests" / "alpaca_tiny.json").read_text()) * repeat
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_bulk_equals_per_row_and_workers_equal_serial(assets, tmp_path):
    path = _alpaca_copy(assets, tmp_path, repeat=45)  # 4500 rows: enough for 2 workers
    ds = tds.alpaca_dataset(ByteTokenizer(), source="json", data_files=path, train_on_input=False)
    per_row = [ds[i] for i in (0, 1, 2, 4499)]
    serial = ds.tokenize_all(num_workers=1, use_cache=False)
    ds2 = tds.alpaca_dataset(ByteTokenizer(), source="json", data_files=path, train_on_input=False)
    parallel = ds2.tokenize_all(num_workers=2, use_cache=False)
    for name in ("tokens", "labels", "offsets"):
        assert np.array_equal(getattr(serial, name), getattr(parallel, name))
    assert [serial.sample(i) for i in (0, 1, 2, 4499)] == per_row
    assert [ds2[i] for i in (0, 1, 2, 4499)] == per_row  # served from the bulk result


def test_second_run_reads_cache(assets, tmp_path):
    path = _alpaca_copy(assets, tmp_path)
    cache = tmp_path / "cache"
    first_tok = CountingTokenizer(max_seq_len=2048)
    first = tds.alpaca_dataset(first_tok, source="json", data_files=path)
    a = first.tokenize_all(cache_dir=cache)
    assert first_tok.calls == 100 and len(os.listdir(cache)) == 1

    again_tok = CountingTokenizer(max_seq_len=2048)
    packed = tds.PackedDataset(
        tds.alpaca_dataset(again_tok, source="json", data_files=path),
        max_seq_len=2048,
        cache_dir=cache,
    )
    assert again_tok.calls == 0  # no row was tokenized again
    b = packed.ds.tokenize_all()
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)

    # other settings, other tokenizer, changed file: new keys
    tds.alpaca_dataset(
        CountingTokenizer(2048), source="json", data_files=path, train_on_input=False
    ).tokenize_all(cache_dir=cache)
    tds.alpaca_dataset(CountingTokenizer(64), source="json", data_files=path).tokenize_all(
        cache_dir=cache
    )
    assert len(os.listdir(cache)) == 3
    rows = json.loads(open(path).read())[:50]
    with open(path, "w") as f:
        json.dump(rows, f)
    changed_tok = CountingTokenizer(max_seq_len=2048)
    changed = tds.alpaca_dataset(changed_tok, source="json", data_files=path).tokenize_all(
        cache_dir=cache
    )
    assert changed_tok.calls == 50 and len(changed) == 50 and len(os.listdir(cache)) == 4


def test_cache_disabled_by_env(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_DATA_CACHE", "0")
    cache = tmp_path / "cache_off"
    ds = tds.alpaca_dataset(
        ByteTokenizer(), source="json", data_files=_alpaca_copy(assets, tmp_path)
    )
    ds.tokenize_all(cache_dir=cache)
    assert not cache.exists()


def test_cache_default_dir_from_env(assets, tmp_path):
    # the autouse fixture points TUNESMITH_DATA_CACHE_DIR at tmp_path / "tokenized_cache"
    ds = tds.alpaca_dataset(
        ByteTokenizer(), source="json", data_files=_alpaca_copy(assets, tmp_path)
    )
    ds.tokenize_all()
    assert len(os.listdir(tmp_path / "tokenized_cache")) == 1


def test_cache_size_cap_evicts_least_recently_used(assets, tmp_path, monkeypatch):
    path = _alpaca_copy(assets, tmp_path)
    cache = tmp_path / "capped"
    monkeypatch.setenv("TUNESMITH_DATA_CACHE_MAX_GB", str(600_000 / 1024**3))
    keys = []
    for max_seq_len in (4096, 2048, 1024):  # three entries of ~430 KB each; room for one
        ds = tds.alpaca_dataset(ByteTokenizer(max_seq_len), source="json", data_files=path)
        ds.tokenize_all(cache_dir=cache)
        keys.append(ds.cache_key())
    assert os.listdir(cache) == [keys[-1]]  # the most recently used entry survived
