"""Samplers: same partition as torch's DistributedSampler, exact mid-epoch resume (also
across a change of world size), length grouping reduces padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tunesmith.data import LengthGroupedBatchSampler, StatefulDistributedSampler, padded_collate_sft


@pytest.mark.parametrize(
    ("n", "world", "drop_last"), [(23, 1, False), (23, 4, False), (23, 4, True)]
)
def test_matches_torch_distributed_sampler(n, world, drop_last):
    data = list(range(n))
    for rank in range(world):
        ours = StatefulDistributedSampler(
            data, world, rank, shuffle=True, seed=3, drop_last=drop_last
        )
        ref = DistributedSampler(data, world, rank, shuffle=True, seed=3, drop_last=drop_last)
        for epoch in (0, 1):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref)
            assert len(ours) == len(ref)


def test_resume_mid_epoch_continues_exactly():
    data = [{"tokens": [i], "labels": [i]} for i in range(50)]
    sampler = StatefulDistributedSampler(data, 1, 0, seed=7)
    sampler.set_epoch(2)
    loader = DataLoader(data, batch_size=4, sampler=sampler, collate_fn=padded_collate_sft)
    full = [b["tokens"].flatten().tolist() for b in loader]
    it = iter(loader)
    first = [next(it)["tokens"].flatten().tolist() for _ in range(5)]
    state = sampler.state_dict()
    assert state["yielded"] == 20 and state["epoch"] == 2

    resumed = StatefulDistributedSampler(data, 1, 0, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the recipe sets the epoch again: the position is kept
    loader2 = DataLoader(data, batch_size=4, sampler=resumed, collate_fn=padded_collate_sft)
    rest = [b["tokens"].flatten().tolist() for b in loader2]
    assert first + rest == full
    resumed.set_epoch(3)  # the next epoch starts from the beginning
    assert len(list(resumed)) == 50


def test_resume_with_different_world_size():
    data = list(range(40))
    single = StatefulDistributedSampler(data, 1, 0, seed=1)
    order = list(single)
    two = [StatefulDistributedSampler(data, 2, r, seed=1) for r in range(2)]
    its = [iter(s) for s in two]
    consumed = [[next(it) for _ in range(6)] for it in its]
    state = two[0].state_dict()
    assert sorted(consumed[0] + consumed[1]) == sorted(order[:12])
    resumed = StatefulDistributedSampler(data, 1, 0, seed=1)
    resumed.load_state_dict(state)
    assert list(resumed) == order[12:]
    with pytest.raises(ValueError, match="seed"):
        StatefulDistributedSampler(data, 1, 0, seed=2).load_state_dict(state)


def test_length_grouped_batches_less_padding_and_resume():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=403).tolist()
    world = 2
    samplers = [
        LengthGroupedBatchSampler(
            None, 4, lengths=lengths, num_replicas=world, rank=r, seed=5, mega_batch_mult=8
        )
        for r in range(world)
    ]
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(batches[1]) == len(samplers[0])
    flat = sorted(i for b in batches for batch in b for i in batch)
    assert set(flat) == set(range(403)) and len(flat) == 404  # one index repeats to even out ranks
    assert all(len(b) == 4 for b in batches[0][:-1])  # only the last batch may be short

    def padded(batch_lists):
        return sum(len(b) * max(lengths[i] for i in b) for b in batch_lists)

    grouped = padded(batches[0] + batches[1])
    random_order = torch.randperm(403, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [random_order[i : i + 4] for i in range(0, 403, 4)]
    assert grouped < 0.75 * padded(random_batches)

    s = LengthGroupedBatchSampler(
        None, 4, lengths=lengths, num_replicas=world, rank=1, seed=5, mega_batch_mult=8
    )
    s.set_epoch(0)
    it = iter(s)
    head = [next(it) for _ in range(10)]
    r = LengthGroupedBatchSampler(
        None, 4, lengths=lengths, num_replicas=world, rank=1, seed=5, mega_batch_mult=8
    )
    r.load_state_dict(s.state_dict())
    assert head + list(r) == batches[1]
    by_samples = LengthGroupedBatchSampler(
        None, 4, lengths=lengths, num_replicas=world, rank=1, seed=5, mega_batch_mult=8
    )
    by_samples.load_state_dict(s.state_dict(num_consumed=40))  # 40 samples = 10 batches
    assert head + list(by_samples) == batches[1]
