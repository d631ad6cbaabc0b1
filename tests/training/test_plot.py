"""Loss / lr curves from DiskLogger output to a PNG."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tunesmith.training.metric_logging import DiskLogger
from tunesmith.training.plot import plot_training_curves, read_metrics


def _log(tmp_path: Path) -> Path:
    logger = DiskLogger(tmp_path, filename="log.jsonl")
    for step in range(1, 21):
        logger.log_dict({"loss": 3.0 * math.exp(-step / 8), "lr": 1e-4 * min(1, step / 5)}, step)
    logger.log("peak_memory_rss", 0.5, 20)
    logger.close()
    return logger.path


def test_read_metrics_collects_series(tmp_path: Path) -> None:
    series = read_metrics(_log(tmp_path))
    assert [s for s, _ in series["loss"]] == list(range(1, 21))
    assert series["lr"][4] == (5, pytest.approx(1e-4))
    assert series["peak_memory_rss"] == [(20, 0.5)]
    assert "time" not in series


def test_png_written_next_to_logs(tmp_path: Path) -> None:
    from matplotlib.image import imread

    out = plot_training_curves(_log(tmp_path))
    assert out == tmp_path / "log.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(out).shape[:2]
    assert width == 770 and height > 500  # 7 in x 110 dpi; two stacked panels


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_metrics(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"step": 1, "accuracy": 0.5}\n')
    with pytest.raises(ValueError, match="none of the metrics"):
        plot_training_curves(empty, tmp_path / "x.png")
