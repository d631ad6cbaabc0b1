"""ConcatDataset: several datasets read as one (multi-dataset mixing)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tunesmith.data import TokenizedSamples

__all__ = ["ConcatDataset"]


class ConcatDataset(Dataset):
    """Items of ``datasets[0]``, then ``datasets[1]``, ...

    ``packed`` is True when every part is packed; mixing packed and unpacked parts is an
    error (their samples need different collate functions).
    """

    def __init__(self, datasets: Sequence[Any]):
        if not datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        self._datasets = list(datasets)
        self._ends = np.cumsum([len(d) for d in self._datasets]).tolist()
        packed = [bool(getattr(d, "packed", False)) for d in self._datasets]
        if any(packed) and not all(packed):
            raise ValueError(
                "ConcatDataset can't mix packed and unpacked datasets: set packed to the same "
                f"value in every dataset entry (got {packed})"
            )
        self.packed = all(packed)

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self._datasets[part][index - start]

    def drop_untrained_rows(self, **tokenize_kwargs: Any) -> None:
        """Every part leaves out its rows with no trained token (see ``SFTDataset``)."""
        for d in self._datasets:
            if hasattr(d, "drop_untrained_rows"):
                d.drop_untrained_rows(**tokenize_kwargs)
        self._ends = np.cumsum([len(d) for d in self._datasets]).tolist()

    def samples(self) -> TokenizedSamples:
        """The parts' samples as one stream, in order (each part's cache is used)."""
        parts = []
        for d in self._datasets:
            if hasattr(d, "samples"):
                parts.append(d.samples())
            else:
                parts.append(TokenizedSamples.from_samples(d[i] for i in range(len(d))))
        return TokenizedSamples.concatenate(parts)

    def tokenize_all(self, **kwargs: Any) -> TokenizedSamples:
        """Bulk tokenization of every part (``kwargs`` go to each part's ``tokenize_all``),
        then ``samples()``."""
        for d in self._datasets:
            if hasattr(d, "tokenize_all"):
                d.tokenize_all(**kwargs)
        return self.samples()

    def max_token_id(self) -> int | None:
        """The largest token id over the parts (None when a part cannot tell)."""
        found = [getattr(d, "max_token_id", lambda: None)() for d in self._datasets]
        return None if None in found else max(found)

    def sample_lengths(self) -> np.ndarray:
        """``[n]`` token count of every sample, in order."""
        lengths = []
        for d in self._datasets:
            if hasattr(d, "sample_lengths"):
                lengths.append(np.asarray(d.sample_lengths(), dtype=np.int64))
            else:
                lengths.append(np.array([len(d[i]["tokens"]) for i in range(len(d))], np.int64))
        return np.concatenate(lengths)
