"""Runs never overwrite finished work, and output folders are checked before the model
loads (issue 12): earlier run, overwrite=True, unwritable folders, free space, adapters
of another rank."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest

from tests.recipes.conftest import LORA
from tunesmith.config import ConfigError
from tunesmith.training import CheckpointError, read_complete_marker


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def no_weight_reads(monkeypatch: pytest.MonkeyPatch):
    """Fail the test if any weight file is read (the check must come first)."""
    import tunesmith.training.checkpointing._base as base

    def boom(*args, **kwargs):
        raise AssertionError("weights were read before the pre-flight check failed")

    monkeypatch.setattr(base, "load_weight_files", boom)


def test_second_run_into_a_finished_output_dir_refuses(run_finetune, monkeypatch) -> None:
    out = run_finetune("out", max_steps_per_epoch=1)
    before = _snapshot(out)
    import tunesmith.training.checkpointing._base as base

    monkeypatch.setattr(base, "load_weight_files", lambda *a, **k: pytest.fail("weights read"))
    with pytest.raises(CheckpointError) as info:
        run_finetune("out", max_steps_per_epoch=1)
    msg = str(info.value)
    assert "\n" not in msg and "epoch_1" in msg and str(out) in msg
    assert "resume_from_checkpoint=True" in msg and "overwrite=True" in msg
    assert _snapshot(out) == before


def test_overwrite_replaces_only_when_the_new_checkpoint_is_published(run_finetune) -> None:
    out = run_finetune("out", max_steps_per_epoch=1, epochs=2)
    old_saved = read_complete_marker(out / "epoch_1")["saved_at_ns"]
    before = _snapshot(out / "epoch_2")
    # a run that fails before its first save leaves the earlier run untouched
    with pytest.raises(Exception):  # noqa: B017,PT011 (any failure after the pre-flight)
        run_finetune("out", max_steps_per_epoch=1, overwrite=True, **{"dataset.data_files": "x"})
    assert _snapshot(out / "epoch_2") == before
    run_finetune("out", max_steps_per_epoch=1, overwrite=True)  # one epoch this time
    assert read_complete_marker(out / "epoch_1")["saved_at_ns"] > old_saved
    assert not (out / "epoch_2").exists()  # the earlier run's other folder went after the save


def test_resume_and_overwrite_together_is_an_error(run_finetune, no_weight_reads) -> None:
    with pytest.raises(CheckpointError, match="contradict"):
        run_finetune("out", resume_from_checkpoint=True, overwrite=True)


def test_unwritable_output_dir_fails_before_the_model_loads(
    run_finetune, tmp_path, no_weight_reads
) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match=r"not writable.*checkpointer.output_dir=.*afile"):
        run_finetune("afile/run")


def test_unwritable_log_dir_fails_before_the_model_loads(
    run_finetune, tmp_path, no_weight_reads
) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match=r"not writable.*metric_logger.log_dir"):
        run_finetune("out", **{"metric_logger.log_dir": str(tmp_path / "afile" / "logs")})


def test_too_little_free_space_fails_before_the_model_loads(
    run_finetune, monkeypatch, no_weight_reads
) -> None:
    import tunesmith.training.checkpointing._preflight as preflight

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    with pytest.raises(CheckpointError, match=r"not enough free disk space.*MB needed.*free"):
        run_finetune("out")


def test_adapter_of_another_rank_is_one_line_naming_both_ranks(run_finetune, tmp_path) -> None:
    lora = {f"model.{k}": v for k, v in LORA.items()}
    first = run_finetune("r8", max_steps_per_epoch=1, save_adapter_weights_only=True, **lora)
    lora["model.lora_rank"] = 4
    with pytest.raises(ConfigError) as info:
        run_finetune(
            "r4",
            max_steps_per_epoch=1,
            **lora,
            **{"checkpointer.adapter_checkpoint": str(first / "epoch_1")},
        )
    msg = str(info.value)
    assert "\n" not in msg and "rank 8" in msg and "rank 4" in msg and "lora_rank" in msg


def test_preflight_creates_nothing(tmp_path: Path) -> None:
    from tunesmith.training import preflight_outputs

    out = tmp_path / "a" / "b" / "out"
    assert preflight_outputs(out, resume=False, log_dirs=[out / "logs"], need_bytes=1) == []
    assert list(tmp_path.iterdir()) == []
