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


def _screen(text: str) -> list[str]:
    """What a terminal shows for ``text`` (``\\r`` returns to column 0, ``\\n`` starts a line)."""
    lines: list[list[str]] = [[]]
    col = 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return ["".join(line).rstrip() for line in lines]


def test_log_lines_and_stdout_metrics_stay_off_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log record or a StdoutLogger line written while the bar is live gets a line of its
    own, and the bar is drawn again below it."""
    import io

    from tunesmith.training.metric_logging import StdoutLogger
    from tunesmith.utils import get_logger

    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)  # tunesmith logs warnings here, the rest to
    monkeypatch.setattr("sys.stdout", stream)  # stdout: one terminal, as on a console
    bar = TrainingProgress(total=10, file=stream, disable=False)
    bar.update(loss=2.0, lr=1e-3)
    get_logger("tunesmith.test").warning("saved checkpoint to /tmp/x")
    get_logger("tunesmith.test").info("validation loss 1.25")
    StdoutLogger(stream=stream).log("loss", 2.0, 1)
    bar.update(loss=1.5, lr=1e-3)
    bar.bar.refresh()
    screen = [line for line in _screen(stream.getvalue()) if line]
    log_lines = [line for line in screen if "saved checkpoint" in line]
    assert len(log_lines) == 1 and log_lines[0].startswith("WARNING "), screen
    assert [line for line in screen if "validation" in line][0].startswith("INFO "), screen
    assert "Step 1 | loss:2.0000" in screen, screen
    assert screen[-1].startswith("train:") and "2/10" in screen[-1], screen
    bar.close()
