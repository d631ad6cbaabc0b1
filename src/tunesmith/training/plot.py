"""Loss / learning-rate curves from a DiskLogger JSONL file, as a PNG (matplotlib, lazy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["plot_training_curves", "read_metrics"]


def read_metrics(jsonl_path: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from a DiskLogger file (numeric values only; later
    lines for the same step, e.g. after a resume, replace earlier ones)."""
    series: dict[str, dict[int, float]] = {}
    path = Path(jsonl_path)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON line ({exc.msg})") from exc
            step = record.get("step")
            if step is None:
                continue
            for key, value in record.items():
                if key in ("step", "time") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float):
                    series.setdefault(key, {})[int(step)] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def plot_training_curves(
    jsonl_path: str | os.PathLike[str],
    out_png: str | os.PathLike[str] | None = None,
    metrics: tuple[str, ...] = ("loss", "lr"),
) -> Path:
    """Plot ``metrics`` (default loss and lr, one panel each, against the optimizer step) from a
    DiskLogger JSONL file to ``out_png`` (default: the JSONL path with ``.png``). Returns the path.

    Raises:
        ValueError: none of ``metrics`` is in the file.
        ImportError: matplotlib missing (``pip install 'tunesmith[plot]'``).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plot_training_curves needs matplotlib: pip install 'tunesmith[plot]'"
        ) from exc

    series = read_metrics(jsonl_path)
    present = [m for m in metrics if series.get(m)]
    if not present:
        raise ValueError(
            f"{jsonl_path}: none of the metrics {list(metrics)} were logged "
            f"(found {sorted(series)})"
        )
    out = Path(out_png) if out_png is not None else Path(jsonl_path).with_suffix(".png")
    # A bare Figure (no pyplot): no global state, no GUI backend, safe in threads.
    fig = Figure(figsize=(7, 2.6 * len(present)))
    axes = fig.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, present):
        steps, values = zip(*series[name])
        ax.plot(steps, values, linewidth=1.4)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    axes[-1].set_xlabel("step")
    axes[0].set_title(Path(jsonl_path).name)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
