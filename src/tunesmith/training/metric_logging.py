"""Metric loggers with torchtune's names and interface, all usable offline.

Every logger has ``log(name, value, step)``, ``log_dict(payload, step)``, ``log_config(cfg)`` and
``close()``, and logs from rank 0 only under torchrun. Heavy libraries (wandb, tensorboard,
comet_ml, mlflow) are imported on construction; a missing one raises a MissingDependencyError (an
ImportError) naming the extra, e.g. ``tunesmith[tensorboard]``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import torch

from tunesmith.utils import write_clear_of_progress_bars

__all__ = [
    "CometLogger",
    "DiskLogger",
    "MLFlowLogger",
    "MetricLoggerInterface",
    "StdoutLogger",
    "TensorBoardLogger",
    "WandBLogger",
]

Scalar = torch.Tensor | float | int


def _rank() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _scalar(value: Scalar) -> float | int:
    if isinstance(value, torch.Tensor):
        value = value.detach().item()
    return value


def _lazy(module: str, logger: str) -> ModuleType:
    """Import ``module`` for ``logger``, or a one-line error naming the extra to install."""
    from tunesmith.config._errors import MissingDependencyError
    from tunesmith.utils._imports import require

    try:
        return require(module, feature=logger)
    except MissingDependencyError as exc:
        raise MissingDependencyError(
            f"{exc}, or pick another metric_logger such as "
            "tunesmith.training.metric_logging.DiskLogger",
            exc.package,
            exc.extra,
        ) from exc.__cause__


def _config_dict(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


class MetricLoggerInterface:
    """The interface every metric logger implements."""

    def log(self, name: str, data: Scalar, step: int) -> None:
        raise NotImplementedError

    def log_dict(self, payload: dict[str, Scalar], step: int) -> None:
        for name, value in payload.items():
            self.log(name, value, step)

    def log_config(self, config: Any) -> None:
        """Record the run's resolved config (default: nothing)."""

    def resume(self, step: int) -> None:
        """Continue the run that stopped at optimizer step ``step`` (called by the recipes
        before anything is logged when they resume from a checkpoint): the next step logged
        is ``step + 1``, and anything an interrupted run logged after ``step`` is dropped or
        hidden where the backend allows it. Default: nothing."""

    def close(self) -> None:
        """Flush and release resources; safe to call twice."""

    def __enter__(self) -> MetricLoggerInterface:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class DiskLogger(MetricLoggerInterface):
    """Append one JSON object per ``log``/``log_dict`` call to ``log_dir/filename`` (JSON Lines:
    ``{"step": 3, "loss": 1.23, "lr": 2e-05, "time": 1730000000.0}``).

    ``filename`` defaults to ``log_<unix time>.jsonl``; the path is ``self.path``. The file is
    opened at the first record and flushed after each line, so a crashed run keeps its
    metrics. Non-zero ranks write nothing.

    ``resume(step)`` keeps one file per run across restarts: without ``filename`` it adopts
    the newest ``log_*.jsonl`` already in ``log_dir`` (the interrupted run's), and it drops,
    atomically, the records of steps after ``step`` (an interrupted run logged them after
    its last checkpoint; the resumed run logs them again), so every step appears once.
    """

    def __init__(self, log_dir: str | os.PathLike[str], filename: str | None = None, **kwargs: Any):
        self.log_dir = Path(log_dir)
        self._named = filename is not None
        self.path = self.log_dir / (filename or f"log_{int(time.time())}.jsonl")
        self._file: TextIO | None = None
        self._enabled = _rank() == 0
        if self._enabled:
            self.log_dir.mkdir(parents=True, exist_ok=True)

    def resume(self, step: int) -> None:
        if not self._enabled:
            return
        if self._file is not None:
            raise RuntimeError("DiskLogger.resume must be called before anything is logged")
        if not self._named:
            earlier = sorted(self.log_dir.glob("log_*.jsonl"), key=_log_file_time)
            if earlier:
                self.path = earlier[-1]
        if self.path.is_file():
            _drop_steps_after(self.path, int(step))

    def _write(self, record: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def log(self, name: str, data: Scalar, step: int) -> None:
        self._write({"step": int(step), name: _scalar(data), "time": time.time()})

    def log_dict(self, payload: dict[str, Scalar], step: int) -> None:
        record: dict[str, Any] = {"step": int(step)}
        record.update({k: _scalar(v) for k, v in payload.items()})
        record["time"] = time.time()
        self._write(record)

    def log_config(self, config: Any) -> None:
        if not self._enabled:
            return
        cfg_path = self.log_dir / "config.json"
        cfg_path.write_text(json.dumps(_config_dict(config), indent=2, default=str) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _log_file_time(path: Path) -> tuple[int, str]:
    """Sort key of ``log_<unix time>.jsonl`` names: the time, then the name."""
    stem = path.stem.removeprefix("log_")
    return (int(stem) if stem.isdigit() else -1, path.name)


def _drop_steps_after(path: Path, step: int) -> None:
    """Rewrite the JSONL file ``path`` without records whose ``step`` is after ``step``
    (write a sibling, fsync, rename: a crash leaves the old file or the new one). A damaged
    last line (a run killed mid-write) goes too; other lines are kept as they are."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept: list[str] = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            kept.append(line)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            if record["step"] > step:
                continue
        kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StdoutLogger(MetricLoggerInterface):
    """Print ``Step 3 | loss:1.2300 lr:2e-05`` lines to stdout (rank 0 only)."""

    def __init__(self, stream: TextIO | None = None, **kwargs: Any):
        self.stream = stream
        self._enabled = _rank() == 0

    def _print(self, line: str) -> None:
        if self._enabled:
            write_clear_of_progress_bars(line, self.stream or sys.stdout)

    @staticmethod
    def _fmt(value: Scalar) -> str:
        value = _scalar(value)
        if isinstance(value, float) and math.isfinite(value) and value != 0:
            return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"
        return str(value)

    def log(self, name: str, data: Scalar, step: int) -> None:
        self._print(f"Step {step} | {name}:{self._fmt(data)}")

    def log_dict(self, payload: dict[str, Scalar], step: int) -> None:
        body = " ".join(f"{k}:{self._fmt(v)}" for k, v in payload.items())
        self._print(f"Step {step} | {body}")

    def log_config(self, config: Any) -> None:
        self._print("config: " + json.dumps(_config_dict(config), default=str))


class WandBLogger(MetricLoggerInterface):
    """Weights & Biases. ``mode="offline"`` (or ``WANDB_MODE=offline``) writes the run under
    ``log_dir`` for a later ``wandb sync``; needs no account or network.

    The run starts at the first record. With ``log_dir``, its id is kept in
    ``log_dir/wandb_run_id``; ``resume(step)`` continues that run (``id=..., resume="allow"``)
    unless ``id`` / ``resume`` are given. Steps are plotted against our ``global_step``, so a
    resumed run's steps continue (the replayed steps are logged again)."""

    REQUIRES: tuple[str, ...] = ("wandb",)  # checked by validate and run up front

    def __init__(
        self,
        project: str = "tunesmith",
        entity: str | None = None,
        group: str | None = None,
        log_dir: str | None = None,
        mode: str | None = None,
        **kwargs: Any,
    ):
        self._wandb = _lazy("wandb", "WandBLogger")
        self._run = None
        self._enabled = _rank() == 0
        self._log_dir = log_dir
        self._init_kwargs: dict[str, Any] = {
            "project": project,
            "entity": entity,
            "group": group,
            "dir": log_dir,
            "mode": mode or os.environ.get("WANDB_MODE"),
            **kwargs,
        }
        if self._enabled and log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)

    def _id_file(self) -> Path | None:
        return None if self._log_dir is None else Path(self._log_dir) / "wandb_run_id"

    def resume(self, step: int) -> None:
        id_file = self._id_file()
        if self._run is not None or not self._enabled or id_file is None:
            return
        if id_file.is_file() and not {"id", "resume"} & set(self._init_kwargs):
            self._init_kwargs.update(id=id_file.read_text().strip(), resume="allow")

    def _get_run(self) -> Any:
        if self._run is None and self._enabled:
            self._run = self._wandb.init(**self._init_kwargs)
            # Plot against our own step key (as torchtune does): wandb's internal step must
            # grow strictly, which breaks on resume and when several calls log the same step.
            self._run.define_metric("global_step")
            self._run.define_metric("*", step_metric="global_step", step_sync=True)
            id_file = self._id_file()
            if id_file is not None and getattr(self._run, "id", None):
                id_file.write_text(str(self._run.id) + "\n")
        return self._run

    def log(self, name: str, data: Scalar, step: int) -> None:
        if (run := self._get_run()) is not None:
            run.log({name: _scalar(data), "global_step": step})

    def log_dict(self, payload: dict[str, Scalar], step: int) -> None:
        if (run := self._get_run()) is not None:
            run.log({**{k: _scalar(v) for k, v in payload.items()}, "global_step": step})

    def log_config(self, config: Any) -> None:
        if (run := self._get_run()) is not None:
            run.config.update(_config_dict(config), allow_val_change=True)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class TensorBoardLogger(MetricLoggerInterface):
    """TensorBoard event files under ``log_dir/run_<rank>_<time>`` (``organize_logs``) or
    ``log_dir``. ``resume(step)`` writes into the newest ``run_<rank>_*`` folder again with
    ``purge_step=step + 1``, so TensorBoard shows one run whose steps after ``step`` (logged
    by the interrupted run) are replaced by the resumed run's."""

    REQUIRES: tuple[str, ...] = ("tensorboard",)  # checked by validate and run up front

    def __init__(self, log_dir: str, organize_logs: bool = True, **kwargs: Any):
        _lazy("tensorboard", "TensorBoardLogger")
        self._tb = _lazy("torch.utils.tensorboard", "TensorBoardLogger")
        self._writer = None
        self._root, self._organize = log_dir, organize_logs
        self._purge_step: int | None = None
        self._enabled = _rank() == 0
        self.log_dir = (
            os.path.join(log_dir, f"run_{_rank()}_{int(time.time())}") if organize_logs else log_dir
        )

    def resume(self, step: int) -> None:
        if self._writer is not None:
            raise RuntimeError("TensorBoardLogger.resume must be called before anything is logged")
        if self._organize:
            runs = sorted(Path(self._root).glob(f"run_{_rank()}_*"), key=_run_dir_time)
            if runs:
                self.log_dir = str(runs[-1])
        self._purge_step = int(step) + 1

    def _get_writer(self) -> Any:
        if self._writer is None and self._enabled:
            self._writer = self._tb.SummaryWriter(log_dir=self.log_dir, purge_step=self._purge_step)
        return self._writer

    def log(self, name: str, data: Scalar, step: int) -> None:
        if (writer := self._get_writer()) is not None:
            writer.add_scalar(name, _scalar(data), global_step=step)

    def log_config(self, config: Any) -> None:
        if (writer := self._get_writer()) is not None:
            writer.add_text("config", json.dumps(_config_dict(config), default=str))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _run_dir_time(path: Path) -> tuple[int, str]:
    stamp = path.name.rsplit("_", 1)[-1]
    return (int(stamp) if stamp.isdigit() else -1, path.name)


class CometLogger(MetricLoggerInterface):
    """Comet. ``online=False`` (default) records an offline experiment archive under
    ``experiment_dir`` (upload later with ``comet upload``)."""

    REQUIRES: tuple[str, ...] = ("comet_ml",)  # checked by validate and run up front

    def __init__(
        self,
        api_key: str | None = None,
        workspace: str | None = None,
        project: str | None = None,
        experiment_name: str | None = None,
        online: bool | None = False,
        experiment_dir: str | None = None,
        **kwargs: Any,
    ):
        comet = _lazy("comet_ml", "CometLogger")
        self._experiment = None
        if _rank() != 0:
            return
        if online:
            self._experiment = comet.Experiment(
                api_key=api_key, workspace=workspace, project_name=project, **kwargs
            )
        else:
            offline_dir = experiment_dir or "comet_offline"
            Path(offline_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = comet.OfflineExperiment(
                workspace=workspace, project_name=project, offline_directory=offline_dir, **kwargs
            )
        if experiment_name:
            self._experiment.set_name(experiment_name)

    def log(self, name: str, data: Scalar, step: int) -> None:
        if self._experiment is not None:
            self._experiment.log_metric(name, _scalar(data), step=step)

    def log_dict(self, payload: dict[str, Scalar], step: int) -> None:
        if self._experiment is not None:
            self._experiment.log_metrics({k: _scalar(v) for k, v in payload.items()}, step=step)

    def log_config(self, config: Any) -> None:
        if self._experiment is not None:
            self._experiment.log_parameters(_flatten(_config_dict(config)))

    def close(self) -> None:
        if self._experiment is not None:
            self._experiment.end()
            self._experiment = None


class MLFlowLogger(MetricLoggerInterface):
    """MLflow. Without ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) runs go to a local file
    store in ``log_dir`` (default ``./mlruns``); no server or database needed. (MLflow 3 calls
    the file store "maintenance mode" and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set;
    for a file store this logger sets it, unless you set it yourself.)"""

    REQUIRES: tuple[str, ...] = ("mlflow",)  # checked by validate and run up front

    def __init__(
        self,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        log_dir: str | None = None,
        **kwargs: Any,
    ):
        self._mlflow = _lazy("mlflow", "MLFlowLogger")
        self._run = None
        if _rank() != 0:
            return
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = Path(log_dir or "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._mlflow.set_tracking_uri(uri)
        self.tracking_uri = uri
        if experiment_name:
            self._mlflow.set_experiment(experiment_name)
        self._run = self._mlflow.start_run(run_id=run_id, run_name=run_name)

    def log(self, name: str, data: Scalar, step: int) -> None:
        if self._run is not None:
            self._mlflow.log_metric(name, _scalar(data), step=step)

    def log_dict(self, payload: dict[str, Scalar], step: int) -> None:
        if self._run is not None:
            self._mlflow.log_metrics({k: _scalar(v) for k, v in payload.items()}, step=step)

    def log_config(self, config: Any) -> None:
        if self._run is not None:
            flat = {k: str(v)[:500] for k, v in _flatten(_config_dict(config)).items()}
            self._mlflow.log_params(flat)

    def close(self) -> None:
        if self._run is not None:
            self._mlflow.end_run()
            self._run = None
