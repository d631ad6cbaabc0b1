"""Distributed: rank 0 tokenizes and writes the cache, the other ranks read it."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch.distributed as dist

from tests.datasets.byte_tokenizer import ByteTokenizer
from tunesmith import datasets as tds


class CountingTokenizer(ByteTokenizer):
    calls = 0

    def __call__(self, sample):
        CountingTokenizer.calls += 1
        return super().__call__(sample)


def _rank_main(rank: int, init_file: str, data: str, cache: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ds = tds.alpaca_dataset(CountingTokenizer(max_seq_len=4096), source="json", data_files=data)
        samples = ds.tokenize_all(num_workers=1, cache_dir=cache)
        with open(f"{out}.{rank}", "w") as f:
            f.write(f"{CountingTokenizer.calls} {len(samples)} {int(samples.tokens.sum())}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_rank_zero_tokenizes_others_read_cache(assets, tmp_path):
    data = str(assets / "torchtune_tests" / "alpaca_tiny.json")
    ctx = multiprocessing.get_context("fork")
    args = (str(tmp_path / "init"), data, str(tmp_path / "cache"), str(tmp_path / "out"))
    procs = [ctx.Process(target=_rank_main, args=(rank, *args)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [open(tmp_path / f"out.{rank}").read().split() for rank in range(2)]
    assert results[0][0] == "100" and results[1][0] == "0"  # rank 1 tokenized nothing
    assert results[0][1:] == results[1][1:]
    assert len(os.listdir(tmp_path / "cache")) == 1
