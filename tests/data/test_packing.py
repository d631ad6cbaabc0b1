"""Packing: no cross-document attention, every token exactly once, positions restart per
document; compared with a straightforward per-sample reimplementation of torchtune's
PackedDataset algorithm (next-fit, pad the tail)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.data import (
    TokenizedSamples,
    pack_sequences,
    padded_collate_packed,
)

IGNORE = -100


def _samples(lengths: list[int], seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    tokens, labels, next_id = [], [], 1
    for n in lengths:
        ids = list(range(next_id, next_id + n))  # every token id unique
        next_id += n
        tokens.append(ids)
        labels.append([t if rng.random() < 0.7 else IGNORE for t in ids])
    return tokens, labels


def _reference_next_fit(tokens, labels, max_seq_len, pad=0):
    """Per-sample packer in the style of torchtune's PackedDataset (no split)."""
    packs, cur = [], {"tokens": [], "labels": [], "input_pos": [], "seq_lens": []}

    def flush():
        n = len(cur["tokens"])
        if not n:
            return
        packs.append(
            {
                "tokens": cur["tokens"] + [pad] * (max_seq_len - n),
                "labels": cur["labels"] + [IGNORE] * (max_seq_len - n),
                "input_pos": cur["input_pos"]
                + [
                    min(cur["input_pos"][-1] + 1 + i, max_seq_len - 1)
                    for i in range(max_seq_len - n)
                ],
                "seq_lens": cur["seq_lens"] + ([max_seq_len - n] if n < max_seq_len else []),
            }
        )

    for t, lab in zip(tokens, labels):
        if not t:
            continue
        if len(cur["tokens"]) + len(t) > max_seq_len:
            flush()
            cur = {"tokens": [], "labels": [], "input_pos": [], "seq_lens": []}
        cur["tokens"] += t
        cur["labels"] += lab
        cur["input_pos"] += list(range(len(t)))
        cur["seq_lens"].append(len(t))
    flush()
    return packs


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    max_seq_len=st.integers(40, 90),
)
def test_next_fit_equals_reference(lengths, max_seq_len):
    tokens, labels = _samples(lengths)
    packed = pack_sequences(TokenizedSamples.from_lists(tokens, labels), max_seq_len, padding_idx=0)
    ref = _reference_next_fit(tokens, labels, max_seq_len)
    assert len(packed) == len(ref)
    for i, r in enumerate(ref):
        p = packed.pack(i)
        for key in ("tokens", "labels", "input_pos", "seq_lens"):
            assert p[key].tolist() == r[key], key


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 50), min_size=1, max_size=25),
    max_seq_len=st.integers(8, 64),
    split=st.booleans(),
)
def test_every_token_once_positions_restart_and_block_mask(lengths, max_seq_len, split):
    if not split:
        lengths = [min(n, max_seq_len) for n in lengths]
    tokens, labels = _samples(lengths, seed=1)
    packed = pack_sequences(
        TokenizedSamples.from_lists(tokens, labels),
        max_seq_len,
        split_across_pack=split,
        padding_idx=0,
    )
    items = [packed.pack_tensors(i) for i in range(len(packed))]
    seen = []
    for item in items:
        toks, pos, doc = item["tokens"], item["input_pos"], item["document_ids"]
        real = toks != 0
        seen += toks[real].tolist()
        # within a document, ids are consecutive and positions count from 0
        for d in doc[real].unique().tolist():
            sel = (doc == d) & real
            ids, p = toks[sel], pos[sel]
            assert p.tolist() == list(range(len(p)))
            assert (ids.diff() == 1).all()
        assert int(item["seq_lens"].sum()) == max_seq_len
        # labels follow their tokens: a label is its token or -100
        assert ((item["labels"] == toks) | (item["labels"] == IGNORE)).all()
        assert (item["labels"][~real] == IGNORE).all()
    assert seen == [t for ts in tokens for t in ts]  # every input token exactly once, in order
    if items:
        batch = padded_collate_packed(items)
        mask = batch["mask"]
        assert mask.shape == (len(items), max_seq_len, max_seq_len) and mask.dtype == torch.bool
        doc = torch.stack([it["document_ids"] for it in items])
        i, j = torch.meshgrid(torch.arange(max_seq_len), torch.arange(max_seq_len), indexing="ij")
        expected = (doc[:, :, None] == doc[:, None, :]) & (j <= i)
        assert torch.equal(mask, expected)
        # no query attends a key of another document
        assert not (mask & (doc[:, :, None] != doc[:, None, :])).any()


def test_split_across_pack_example():
    tokens = [[1, 2, 3, 4, 5, 6], [7, 8], [9]]
    labels = [[IGNORE, 2, 3, 4, 5, 6], [7, 8], [9]]
    packed = pack_sequences(TokenizedSamples.from_lists(tokens, labels), 4, split_across_pack=True)
    got = [packed.pack(i) for i in range(len(packed))]
    assert [g["tokens"].tolist() for g in got] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert [g["input_pos"].tolist() for g in got] == [[0, 1, 2, 3], [0, 1, 0, 1], [0, 1, 2, 3]]
    assert [g["seq_lens"].tolist() for g in got] == [[4], [2, 2], [1, 3]]
    assert got[0]["labels"].tolist() == [IGNORE, 2, 3, 4]
    assert got[2]["labels"].tolist() == [9, IGNORE, IGNORE, IGNORE]


def test_too_long_sample_without_split_names_sample():
    s = TokenizedSamples.from_lists([[1, 2], [3, 4, 5, 6, 7]], [[1, 2], [3, 4, 5, 6, 7]])
    with pytest.raises(ValueError, match="sample 1 has 5 tokens.*split_across_pack"):
        pack_sequences(s, 4)


def test_max_packs_and_padding_idx():
    tokens, labels = _samples([5, 5, 5, 5])
    packed = pack_sequences(
        TokenizedSamples.from_lists(tokens, labels), 6, max_packs=2, padding_idx=9
    )
    assert len(packed) == 2
    assert packed.pack(1)["tokens"].tolist() == tokens[1] + [9]


def test_collate_accepts_torchtune_style_seq_lens():
    item = {
        "tokens": torch.tensor([5, 6, 7, 0]),
        "labels": torch.tensor([5, 6, 7, IGNORE]),
        "input_pos": torch.tensor([0, 1, 0, 1]),
        "seq_lens": torch.tensor([2, 1, 1]),
    }
    mask = padded_collate_packed([item])["mask"][0].int().tolist()
    assert mask == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="document_ids"):
        padded_collate_packed([{k: v for k, v in item.items() if k != "seq_lens"}])


def test_packed_batch_through_decoder_equals_documents_alone():
    """End to end: a packed, collated batch gives every document the logits it gets alone."""
    from tunesmith.datasets import PackedDataset
    from tunesmith.models import build_decoder
    from tunesmith.models.spec import ModelSpec

    spec = ModelSpec(
        family="LLAMA3",
        vocab_size=101,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        embed_dim=32,
        intermediate_dim=48,
        max_seq_len=64,
    )
    torch.manual_seed(0)
    model = build_decoder(spec).eval()
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 101, (n,), generator=gen).tolist() for n in (7, 12, 5, 20, 9, 3)]
    packed = PackedDataset([{"tokens": d, "labels": d} for d in docs], max_seq_len=24)
    batch = padded_collate_packed([packed[i] for i in range(len(packed))])
    with torch.no_grad():
        logits = model(batch["tokens"], mask=batch["mask"], input_pos=batch["input_pos"])
        expected = [model(torch.tensor([d]))[0] for d in docs]
    used = np.diff(packed.packs.pack_token_offsets)  # real (non-padding) tokens per pack
    got = []
    for row in range(len(packed)):
        start = 0
        for n in packed[row]["seq_lens"].tolist():
            if start < used[row]:
                got.append(logits[row, start : start + n])
            start += n
    assert len(got) == len(docs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
