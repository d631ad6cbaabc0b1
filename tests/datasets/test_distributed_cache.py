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


def _node_rank_main(rank: int, init_file: str, data: str, tmp: str) -> None:
    """Two simulated nodes of two ranks each; every node has its own cache folder."""
    os.environ["LOCAL_RANK"] = str(rank % 2)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=4)
    try:
        ds = tds.alpaca_dataset(CountingTokenizer(max_seq_len=4096), source="json", data_files=data)
        samples = ds.tokenize_all(num_workers=1, cache_dir=f"{tmp}/cache_node{rank // 2}")
        with open(f"{tmp}/out.{rank}", "w") as f:
            f.write(f"{CountingTokenizer.calls} {len(samples)} {int(samples.tokens.sum())}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_local_rank_zero_of_each_node_fills_its_cache(assets, tmp_path):
    data = str(assets / "torchtune_tests" / "alpaca_tiny.json")
    ctx = multiprocessing.get_context("fork")
    args = (str(tmp_path / "init"), data, str(tmp_path))
    procs = [ctx.Process(target=_node_rank_main, args=(rank, *args)) for rank in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    results = [open(tmp_path / f"out.{rank}").read().split() for rank in range(4)]
    assert [r[0] for r in results] == ["100", "0", "100", "0"]  # one tokenizer per node
    assert all(r[1:] == results[0][1:] for r in results)
    assert [len(os.listdir(tmp_path / f"cache_node{n}")) for n in (0, 1)] == [1, 1]


def test_fills_cache_prefers_local_rank(monkeypatch):
    from tunesmith.datasets._cache import fills_cache

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert fills_cache(0) and not fills_cache(3)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert fills_cache(8)  # first process of the second node
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not fills_cache(0)
