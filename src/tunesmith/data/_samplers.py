"""Distributed-aware, resumable samplers.

``StatefulDistributedSampler`` gives each rank its share of a (seeded, per-epoch)
permutation and remembers how far it got, so a resumed run continues with exactly
the samples an uninterrupted run would have seen. ``LengthGroupedBatchSampler``
builds batches of similar-length samples for unpacked data (far less padding),
with the same resume guarantees.

Resume accounting: both samplers count what they have handed out. A ``DataLoader``
with ``num_workers=0`` draws indices only when it builds a batch, so the count equals
what was consumed. With worker processes the loader prefetches, so pass the number of
samples (or batches) actually consumed to ``state_dict``.

How a recipe builds the loader (packed or not, optionally length-grouped)::

    ds = instantiate(cfg.dataset, tokenizer)  # a list of datasets -> ConcatDataset([...])
    packed = getattr(ds, "packed", False)
    collate = (padded_collate_packed if packed else
               partial(padded_collate_sft, padding_idx=tokenizer.pad_id, ignore_idx=-100))
    if cfg.get("group_by_length", False) and not packed:
        sampler = LengthGroupedBatchSampler(ds, cfg.batch_size, num_replicas=world_size,
                                            rank=rank, shuffle=cfg.shuffle, seed=seed,
                                            drop_last=True)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    else:
        sampler = StatefulDistributedSampler(ds, num_replicas=world_size, rank=rank,
                                             shuffle=cfg.shuffle, seed=seed)
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler,
                            collate_fn=collate, drop_last=True)

Each epoch call ``sampler.set_epoch(epoch)``; save ``sampler.state_dict(num_consumed=n)``
(``n`` = samples this rank consumed this epoch, for either sampler) and resume with
``sampler.load_state_dict(state)`` before the epoch loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

__all__ = ["StatefulDistributedSampler", "LengthGroupedBatchSampler", "sample_lengths"]


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas}), got rank={rank}")
    return num_replicas, rank


def _permutation(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n))
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


class StatefulDistributedSampler(Sampler[int]):
    """Per-rank indices of a seeded permutation, resumable mid-epoch.

    Same partition as ``torch.utils.data.DistributedSampler``: the permutation (seeded by
    ``seed + epoch``) is padded by wrapping (or truncated with ``drop_last``) to a
    multiple of ``num_replicas`` and rank ``r`` takes elements ``r, r + W, ...``.

    Args:
        dataset: anything with ``len``.
        num_replicas: world size (default: from ``torch.distributed``, else 1).
        rank: this process's rank (default: from ``torch.distributed``, else 0).
        shuffle: shuffle each epoch.
        seed: shuffle seed, identical on every rank.
        drop_last: drop the tail instead of padding it to a multiple of ``num_replicas``.
    """

    def __init__(
        self,
        dataset: Dataset | Sequence[Any],
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        self.dataset = dataset
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.yielded = 0
        self._resume_at = 0
        n = len(dataset)  # type: ignore[arg-type]
        if drop_last:
            self.num_samples = n // self.num_replicas
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def _rank_indices(self) -> list[int]:
        indices = _permutation(len(self.dataset), self.seed, self.epoch, self.shuffle)  # type: ignore[arg-type]
        if self.drop_last:
            indices = indices[: self.total_size]
        elif indices:
            while len(indices) < self.total_size:
                indices += indices[: self.total_size - len(indices)]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self._resume_at = self._resume_at, 0
        self.yielded = start
        for index in self._rank_indices()[start:]:
            self.yielded += 1
            yield index

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``; a pending resume position only applies to
        the epoch it was saved in."""
        if epoch != self.epoch:
            self._resume_at = 0
        self.epoch = epoch

    def state_dict(self, num_consumed: int | None = None) -> dict[str, int]:
        """Position within the epoch. ``num_consumed``: samples this rank actually consumed
        this epoch (pass it when a prefetching DataLoader drew ahead); default: yielded."""
        consumed = self.yielded if num_consumed is None else num_consumed
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "yielded": consumed,
            "num_replicas": self.num_replicas,
            "global_consumed": consumed * self.num_replicas,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next ``__iter__`` of ``state["epoch"]`` continues after the consumed
        samples. A different world size resumes at the same global position."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"sampler state was saved with seed={state['seed']} but this run uses "
                f"seed={self.seed}; set the config's seed to {state['seed']} to resume exactly"
            )
        self.epoch = int(state["epoch"])
        global_consumed = int(state.get("global_consumed", state["yielded"]))
        self._resume_at = min(global_consumed // self.num_replicas, self.num_samples)
        self.yielded = self._resume_at


def sample_lengths(dataset: Dataset | Sequence[Any]) -> np.ndarray:
    """``[n]`` token count of every sample: ``dataset.sample_lengths()`` when the dataset
    has it (tunesmith datasets compute it in bulk), else ``len(dataset[i]["tokens"])``."""
    if hasattr(dataset, "sample_lengths"):
        return np.asarray(dataset.sample_lengths(), dtype=np.int64)
    n = len(dataset)  # type: ignore[arg-type]
    return np.fromiter((len(dataset[i]["tokens"]) for i in range(n)), dtype=np.int64, count=n)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar-length samples (less padding for unpacked data), per rank.

    Each epoch the indices are shuffled (seed + epoch), cut into mega-batches of
    ``batch_size * num_replicas * mega_batch_mult`` samples, each mega-batch is sorted by
    length (longest first) and cut into global batches of ``batch_size * num_replicas``;
    the global batches are then shuffled. Rank ``r`` gets the ``r``-th slice of each
    global batch, so ranks step in lock-step over similar lengths.

    Use it as ``DataLoader(dataset, batch_sampler=LengthGroupedBatchSampler(...),
    collate_fn=padded_collate_sft)``.

    Args:
        dataset: the (unpacked) dataset; lengths come from :func:`sample_lengths`.
        batch_size: samples per batch on each rank.
        lengths: precomputed lengths (skips reading the dataset).
        num_replicas, rank, shuffle, seed: as for :class:`StatefulDistributedSampler`.
        drop_last: drop the last incomplete global batch (else it is split evenly across
            ranks after padding by wrapping to a multiple of ``num_replicas``).
        mega_batch_mult: global batches per sorting group; larger = less padding, less
            randomness.
    """

    def __init__(
        self,
        dataset: Dataset | Sequence[Any] | None,
        batch_size: int,
        *,
        lengths: Sequence[int] | np.ndarray | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        mega_batch_mult: int = 50,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if lengths is None:
            if dataset is None:
                raise ValueError("LengthGroupedBatchSampler needs a dataset or lengths")
            lengths = sample_lengths(dataset)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0
        self.yielded = 0
        self._resume_at = 0

    def _global_batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        order = np.asarray(_permutation(n, self.seed, self.epoch, self.shuffle), dtype=np.int64)
        world = self.num_replicas
        global_size = self.batch_size * world
        if self.drop_last:
            order = order[: n // global_size * global_size]
        elif n and n % world:
            order = np.concatenate([order, np.resize(order, world - n % world)])
        mega = global_size * self.mega_batch_mult
        batches: list[np.ndarray] = []
        for start in range(0, len(order), mega):
            group = order[start : start + mega]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches.extend(group[i : i + global_size] for i in range(0, len(group), global_size))
        # the one short batch (if any) stays last, so every earlier batch is full
        short = [b for b in batches if len(b) < global_size]
        full = [b for b in batches if len(b) == global_size]
        if self.shuffle and len(full) > 1:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch + 1_000_003)
            perm = torch.randperm(len(full), generator=generator).tolist()
            full = [full[i] for i in perm]
        return full + short

    def _rank_batches(self) -> list[list[int]]:
        out = []
        for batch in self._global_batches():
            per_rank = len(batch) // self.num_replicas
            out.append(batch[self.rank * per_rank : (self.rank + 1) * per_rank].tolist())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_at = self._resume_at, 0
        self.yielded = start
        for batch in self._rank_batches()[start:]:
            self.yielded += 1
            yield batch

    def __len__(self) -> int:
        n = len(self.lengths)
        global_size = self.batch_size * self.num_replicas
        if self.drop_last:
            return n // global_size
        padded = -(-n // self.num_replicas) * self.num_replicas
        return -(-padded // global_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a pending resume position only applies to its epoch."""
        if epoch != self.epoch:
            self._resume_at = 0
        self.epoch = epoch

    def state_dict(self, num_consumed: int | None = None) -> dict[str, int]:
        """Batches yielded this epoch. ``num_consumed``: samples this rank actually consumed
        (as for ``StatefulDistributedSampler``), when a prefetching DataLoader drew ahead."""
        if num_consumed is None:
            consumed = self.yielded
        else:  # all batches but the last are full
            consumed = -(-num_consumed // self.batch_size)
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "yielded": consumed,
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume after ``state["yielded"]`` batches of ``state["epoch"]``."""
        for key in ("seed", "num_replicas", "batch_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"length-grouped sampler state was saved with {key}={state[key]} but this "
                    f"run has {key}={getattr(self, key)}; use the same value to resume exactly"
                )
        self.epoch = int(state["epoch"])
        self._resume_at = int(state["yielded"])
        self.yielded = self._resume_at
