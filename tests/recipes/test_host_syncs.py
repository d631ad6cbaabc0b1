"""Per-step host syncs and host work the step does not need (issue 18, item 12).

A CUDA sync cannot be observed on CPU, so these tests are structural: the unpadding runs
where the batch lives and only copies results to the device (a ``meta`` device, whose values
cannot be read, stands in for the GPU); the losses read the device once per forward (counted
by patching every tensor-to-host read); packed batches skip the dense mask when the recipe
does not use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from tests.recipes.conftest import read_losses
from tests.recipes.test_unpadded_batches import _packs
from tunesmith.data import _collate, padded_collate_packed
from tunesmith.modules.loss import CEWithChunkedOutputLoss, LinearCrossEntropyLoss
from tunesmith.recipes._unpad import batch_inputs as _to_device

HOST_READS = ("tolist", "item", "nonzero", "__bool__", "__int__", "__float__")


@contextlib.contextmanager
def count_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``Tensor.tolist/item/nonzero/bool/int/float`` and ``torch.nonzero`` call."""
    calls: list[str] = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def wrapped(self, *a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    real_nonzero = torch.nonzero
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: calls.append("nonzero") or
                        real_nonzero(*a, **k))  # fmt: skip
    yield calls
    monkeypatch.undo()


def test_unpad_reads_only_the_host_batch():
    batch = padded_collate_packed(_packs([[7, 20, 5], [40], [3, 3, 9]], 48, seed=1), mask=False)
    on_host = _to_device(dict(batch), torch.device("cpu"), -100, unpad=True, bucket=64)
    # meta tensors hold no values: any read of the moved tensors would raise
    moved, targets = _to_device(dict(batch), torch.device("meta"), -100, unpad=True, bucket=64)
    assert moved["tokens"].device.type == "meta" and targets.device.type == "meta"
    assert moved["seq_lens"] == on_host[0]["seq_lens"]
    assert moved["tokens"].shape == on_host[0]["tokens"].shape == (1, 128)


def test_packed_collate_builds_no_mask_when_asked(monkeypatch):
    packs = _packs([[7, 20, 5], [40]], 48, seed=1)
    with_mask = padded_collate_packed(packs)
    monkeypatch.setattr(_collate, "packed_causal_mask", lambda *a: pytest.fail("mask built"))
    without = padded_collate_packed(packs, mask=False)
    assert "mask" not in without and with_mask["mask"].shape == (2, 48, 48)
    for key in ("tokens", "labels", "input_pos"):
        assert torch.equal(without[key], with_mask[key])


def test_finetune_on_packs_never_builds_the_mask(run_finetune, monkeypatch):
    real, built = _collate.packed_causal_mask, []
    monkeypatch.setattr(_collate, "packed_causal_mask", lambda ids: built.append(1) or real(ids))
    out = run_finetune(**{"dataset.packed": True, "max_steps_per_epoch": 2})
    assert built == []
    losses = read_losses(out)  # it trained on the packs without the mask
    assert len(losses) == 2 and all(v == v for v in losses)


@pytest.mark.parametrize("loss_cls", [LinearCrossEntropyLoss, CEWithChunkedOutputLoss])
def test_losses_read_the_device_once(monkeypatch, loss_cls):
    torch.manual_seed(0)
    hidden = torch.randn(2, 24, 16, requires_grad=True)
    targets = torch.randint(0, 40, (2, 24))
    targets[:, :7] = -100
    out = torch.nn.Linear(16, 40, bias=False)
    loss_fn = loss_cls(num_output_chunks=4)
    if loss_cls is LinearCrossEntropyLoss:
        loss_fn.set_model_output(type("M", (), {"output": out})())
        args = (hidden, targets)
    else:
        args = ([c for c in out(hidden).chunk(4, dim=1)], targets)
    ref = torch.nn.functional.cross_entropy(out(hidden).flatten(0, 1), targets.flatten())
    with count_host_reads(monkeypatch) as calls:
        loss = loss_fn(*args)
    assert len(calls) == 1, calls
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
