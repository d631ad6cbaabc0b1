"""Metric loggers: DiskLogger/StdoutLogger fully; TensorBoard/MLflow offline where installed;
the missing-extra message otherwise."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tunesmith.training import metric_logging as ml


def test_disk_logger_writes_jsonl(tmp_path: Path) -> None:
    logger = ml.DiskLogger(log_dir=tmp_path / "logs", filename="run.jsonl")
    logger.log("loss", torch.tensor(2.5), step=1)
    logger.log_dict({"loss": 1.25, "lr": 2e-5, "tokens_per_second": torch.tensor(100)}, step=2)
    logger.log_config(
        OmegaConf.create({"lr": 2e-5, "model": {"_component_": "x.y", "rank": "${lr}"}})
    )
    logger.close()
    logger.close()  # idempotent
    lines = [json.loads(x) for x in (tmp_path / "logs" / "run.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert lines[0]["loss"] == 2.5
    assert (
        lines[1]["loss"] == 1.25 and lines[1]["lr"] == 2e-5 and lines[1]["tokens_per_second"] == 100
    )
    assert all(isinstance(r["time"], float) for r in lines)
    config = json.loads((tmp_path / "logs" / "config.json").read_text())
    assert config["model"]["rank"] == 2e-5  # interpolations resolved


def test_disk_logger_default_name_and_append(tmp_path: Path) -> None:
    first = ml.DiskLogger(tmp_path)
    first.log("loss", 1.0, 1)
    first.close()
    assert first.path.parent == tmp_path and first.path.suffix == ".jsonl"
    again = ml.DiskLogger(tmp_path, filename=first.path.name)
    again.log("loss", 0.5, 2)
    again.close()
    assert len(first.path.read_text().splitlines()) == 2


def test_disk_logger_silent_on_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    logger = ml.DiskLogger(tmp_path / "r1")
    logger.log("loss", 1.0, 1)
    logger.close()
    assert not (tmp_path / "r1").exists()


def test_stdout_logger_format() -> None:
    buf = io.StringIO()
    with ml.StdoutLogger(stream=buf) as logger:
        logger.log("loss", torch.tensor(1.23456), 3)
        logger.log_dict({"loss": 0.5, "lr": 2e-5, "tokens": 128}, 4)
    assert buf.getvalue().splitlines() == [
        "Step 3 | loss:1.2346",
        "Step 4 | loss:0.5000 lr:2e-05 tokens:128",
    ]


@pytest.mark.parametrize(
    "cls,module",
    [
        (ml.WandBLogger, "wandb"),
        (ml.CometLogger, "comet_ml"),
        (ml.MLFlowLogger, "mlflow"),
        (ml.TensorBoardLogger, "tensorboard"),
    ],
)
def test_missing_library_names_the_extra(cls: type, module: str, tmp_path: Path) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    extra = {"comet_ml": "comet"}.get(module, module)
    with pytest.raises(ImportError, match=rf"pip install 'tunesmith\[{extra}\]'"):
        cls(log_dir=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
def test_tensorboard_logger_events_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = ml.TensorBoardLogger(log_dir=str(tmp_path))
    logger.log("loss", 2.0, 1)
    logger.log_dict({"loss": 1.5, "lr": 1e-4}, 2)
    logger.close()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.0), (2, 1.5)]
    assert events.Scalars("lr")[0].value == pytest.approx(1e-4)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs mlflow")
def test_mlflow_logger_local_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = ml.MLFlowLogger(experiment_name="tiny", log_dir=str(tmp_path / "mlruns"))
    logger.log("loss", 1.5, 1)
    logger.log_dict({"loss": 1.25, "lr": 0.1}, 2)
    logger.log_config({"optimizer": {"lr": 0.1}})
    logger.close()
    client = mlflow.tracking.MlflowClient(logger.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 1.25)]
    assert run.data.params == {"optimizer.lr": "0.1"}


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs wandb")
def test_wandb_logger_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = ml.WandBLogger(project="tiny", log_dir=str(tmp_path), mode="offline")
    logger.log_dict({"loss": 1.25, "learning_rate": 0.1}, 2)
    logger.log_config({"optimizer": {"lr": 0.1}})
    logger.close()
    wandb.teardown()  # the wandb-core service writes the run file out when it stops
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    assert b"learning_rate" in data and b"global_step" in data and b"optimizer" in data


@pytest.mark.skipif(importlib.util.find_spec("comet_ml") is None, reason="needs comet_ml")
def test_comet_logger_offline_archive(tmp_path: Path) -> None:
    import zipfile

    logger = ml.CometLogger(project="tiny", experiment_dir=str(tmp_path), experiment_name="run1")
    logger.log("loss", 1.5, 1)
    logger.log_dict({"loss": 1.25, "learning_rate": 0.1}, 2)
    logger.log_config({"optimizer": {"lr": 0.1}})
    logger.close()
    (archive,) = tmp_path.glob("*.zip")
    lines = zipfile.ZipFile(archive).read("messages.json").decode().splitlines()
    messages = [json.loads(line)["payload"] for line in lines]
    metrics = {
        (m["metric"]["metricName"], m["metric"]["step"]): m["metric"]["metricValue"]
        for m in messages
        if "metric" in m and not m["metric"]["metricName"].startswith("sys.")
    }
    assert metrics == {("loss", 1): 1.5, ("loss", 2): 1.25, ("learning_rate", 2): 0.1}
    params = {m["param"]["paramName"]: m["param"]["paramValue"] for m in messages if "param" in m}
    assert params["optimizer.lr"] == 0.1
