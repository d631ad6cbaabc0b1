"""Collate padding against torch's pad_sequence and hand-written expectations."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from tunesmith.data import left_pad_sequence, padded_collate, padded_collate_dpo, padded_collate_sft


def test_padded_collate_sft():
    batch = [{"tokens": [1, 2, 3], "labels": [-100, 2, 3]}, {"tokens": [7], "labels": [7]}]
    out = padded_collate_sft(batch, padding_idx=5)
    assert out["tokens"].tolist() == [[1, 2, 3], [7, 5, 5]]
    assert out["labels"].tolist() == [[-100, 2, 3], [7, -100, -100]]
    assert out["tokens"].dtype == torch.long
    ref = pad_sequence(
        [torch.tensor(b["tokens"]) for b in batch], batch_first=True, padding_value=5
    )
    assert torch.equal(out["tokens"], ref)


@pytest.mark.parametrize(("multiple", "expected"), [(1, 3), (4, 4), (3, 3), (8, 8)])
def test_pad_to_multiple_of(multiple, expected):
    batch = [{"tokens": [1, 2, 3], "labels": [1, 2, 3]}, {"tokens": [4], "labels": [4]}]
    out = padded_collate_sft(batch, pad_to_multiple_of=multiple, ignore_idx=-1)
    assert out["tokens"].shape == (2, expected) and out["labels"].shape == (2, expected)
    assert out["labels"][1, 1:].eq(-1).all()


def test_padded_collate_dpo():
    batch = [
        {
            "chosen_input_ids": [1, 2],
            "chosen_labels": [-100, 2],
            "rejected_input_ids": [1, 3, 4],
            "rejected_labels": [-100, 3, 4],
        },
        {
            "chosen_input_ids": [5],
            "chosen_labels": [5],
            "rejected_input_ids": [6],
            "rejected_labels": [6],
        },
    ]
    ids, labels = padded_collate_dpo(batch, padding_idx=0)
    assert ids.tolist() == [[1, 2, 0], [5, 0, 0], [1, 3, 4], [6, 0, 0]]
    assert labels.tolist() == [[-100, 2, -100], [5, -100, -100], [-100, 3, 4], [6, -100, -100]]


def test_left_pad_and_generic_collate():
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert left_pad_sequence(seqs, padding_value=0).tolist() == [[1, 2, 3], [0, 0, 4]]
    assert left_pad_sequence(seqs, batch_first=False, padding_value=9).tolist() == [
        [1, 9],
        [2, 9],
        [3, 4],
    ]
    out = padded_collate(
        [{"tokens": [1, 2], "id": "a"}, {"tokens": [3], "id": "b"}],
        pad_direction="left",
        keys_to_pad=["tokens"],
        padding_idx=0,
    )
    assert out["tokens"].tolist() == [[1, 2], [0, 3]] and out["id"] == ["a", "b"]
