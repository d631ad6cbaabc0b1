"""The training progress bar shows step, loss, lr, tokens/s and an ETA."""

from __future__ import annotations

import io
import time

import pytest

from tunesmith.training.progress import TrainingProgress


def test_bar_shows_loss_lr_throughput_and_eta() -> None:
    buf = io.StringIO()
    with TrainingProgress(total=5, desc="epoch 1", file=buf, disable=False) as bar:
        rates = []
        for step in range(3):
            time.sleep(0.02)
            rates.append(bar.update(loss=2.0 - step * 0.5, lr=3e-4, num_tokens=1000))
        bar.bar.refresh()
        shown = buf.getvalue()
    assert "epoch 1" in shown and "3/5" in shown
    assert "loss=1.0000" in shown and "lr=0.0003" in shown and "tok/s=" in shown
    assert "<" in shown  # tqdm's remaining-time estimate, [elapsed<remaining]
    # ~1000 tokens per ~20 ms step: well under the 50k tok/s an instantaneous clock would give
    assert all(r is not None and 1_000 < r < 50_000 for r in rates)
    assert bar.step == 3


def test_resume_starts_at_initial_and_hidden_off_rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    bar = TrainingProgress(total=10, initial=4, file=buf, disable=False)
    assert bar.update(loss=1.0) is None  # no tokens given: no throughput
    bar.close()
    assert "5/10" in buf.getvalue()
    monkeypatch.setenv("RANK", "1")
    quiet = io.StringIO()
    hidden = TrainingProgress(total=3, file=quiet)
    hidden.update(loss=1.0, lr=1e-3, num_tokens=10)
    hidden.close()
    assert quiet.getvalue() == ""
