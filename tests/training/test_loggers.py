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


def _steps(path: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def test_disk_logger_resume_continues_the_interrupted_file(tmp_path: Path) -> None:
    """A resumed run (default file name) writes into the interrupted run's file, and the steps
    that run logged after its last checkpoint are dropped before they are logged again."""
    (tmp_path / "log_100.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # an older run
    first = ml.DiskLogger(tmp_path)
    first.path = tmp_path / "log_200.jsonl"  # the interrupted run's name
    for step in range(1, 8):
        first.log_dict({"loss": float(step)}, step)
    first.log_dict({"val_loss": 0.5}, 5)
    first.close()
    with first.path.open("a") as f:
        f.write('{"step": 8, "lo')  # killed mid-line

    resumed = ml.DiskLogger(tmp_path)
    resumed.resume(5)  # its last checkpoint was after step 5
    assert resumed.path == first.path
    for step in range(6, 11):
        resumed.log_dict({"loss": float(step)}, step)
    resumed.close()
    assert _steps(first.path) == [(s, float(s)) for s in range(1, 11)]
    assert '"val_loss": 0.5' in first.path.read_text()  # step 5's validation kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log_100.jsonl", "log_200.jsonl"]


def test_disk_logger_resume_named_file_and_nothing_before(tmp_path: Path) -> None:
    named = ml.DiskLogger(tmp_path, filename="log.jsonl")
    for step in (1, 2, 3):
        named.log("loss", float(step), step)
    named.close()
    again = ml.DiskLogger(tmp_path, filename="log.jsonl")
    again.resume(1)
    again.log("loss", 2.5, 2)
    again.close()
    assert _steps(tmp_path / "log.jsonl") == [(1, 1.0), (2, 2.5)]
    fresh = ml.DiskLogger(tmp_path / "empty")
    fresh.resume(4)  # nothing logged before (a deleted log folder): a new file
    fresh.log("loss", 1.0, 5)
    fresh.close()
    assert _steps(fresh.path) == [(5, 1.0)]
    late = ml.DiskLogger(tmp_path / "late")
    late.log("loss", 1.0, 1)
    with pytest.raises(RuntimeError, match="before anything is logged"):
        late.resume(0)


class _FakeWriter:
    made: list[dict] = []

    def __init__(self, **kwargs: object) -> None:
        _FakeWriter.made.append(kwargs)
        self.scalars: list[tuple] = []

    def add_scalar(self, name: str, value: float, global_step: int) -> None:
        self.scalars.append((name, value, global_step))

    def add_text(self, *args: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_tensorboard_resume_reuses_run_folder_and_purges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume writes into the newest run_<rank>_* folder with purge_step = step + 1 (the
    SummaryWriter itself is a stand-in: tensorboard is optional)."""
    import types

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter  # type: ignore[attr-defined]
    real_lazy = ml._lazy
    monkeypatch.setattr(
        ml, "_lazy", lambda m, n: fake if m.endswith("tensorboard") else real_lazy(m, n)
    )
    _FakeWriter.made.clear()
    for stamp in ("100", "250", "90"):
        (tmp_path / f"run_0_{stamp}").mkdir()
    logger = ml.TensorBoardLogger(log_dir=str(tmp_path))
    logger.resume(7)
    logger.log("loss", 1.0, 8)
    logger.close()
    assert _FakeWriter.made == [{"log_dir": str(tmp_path / "run_0_250"), "purge_step": 8}]
    fresh = ml.TensorBoardLogger(log_dir=str(tmp_path / "new"))
    fresh.log("loss", 1.0, 1)
    assert _FakeWriter.made[-1]["purge_step"] is None
    assert Path(_FakeWriter.made[-1]["log_dir"]).name.startswith("run_0_")


def test_wandb_resume_continues_the_recorded_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run id is kept in log_dir; a resumed logger re-opens that run (resume="allow")."""
    import types

    inits: list[dict] = []

    class Run:
        def __init__(self, **kwargs: object) -> None:
            inits.append(kwargs)
            self.id = kwargs.get("id") or f"run{len(inits)}"
            self.logged: list[dict] = []

        def define_metric(self, *args: object, **kwargs: object) -> None:
            pass

        def log(self, record: dict) -> None:
            self.logged.append(record)

        def finish(self) -> None:
            pass

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: Run(**kwargs)  # type: ignore[attr-defined]
    monkeypatch.setattr(ml, "_lazy", lambda m, n: fake)
    first = ml.WandBLogger(project="p", log_dir=str(tmp_path), mode="offline")
    first.log("loss", 2.0, 1)
    first.close()
    again = ml.WandBLogger(project="p", log_dir=str(tmp_path), mode="offline")
    again.resume(1)
    again.log("loss", 1.0, 2)
    assert inits[1]["id"] == "run1" and inits[1]["resume"] == "allow"
    assert again._run.logged == [{"loss": 1.0, "global_step": 2}]
    assert "id" not in inits[0]
