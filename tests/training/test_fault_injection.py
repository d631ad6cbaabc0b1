"""Faults during and after saves (issue 12): a full disk mid-save, and a damaged newest
checkpoint, must leave earlier work intact and resume onto the uninterrupted loss curve."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.training.test_resume_harness import make_base_checkpoint, train
from tunesmith.training import (
    CheckpointError,
    latest_complete_checkpoint,
    list_complete_checkpoints,
    verify_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]
TOTAL = 12


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (needs root / CAP_SYS_ADMIN; the test skips otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here; ENOSPC injection is covered by "
            "test_checkpoint_integrity::test_disk_full_during_save_is_one_line_..."
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """Write a filler file until only about ``leave`` bytes are free on ``folder``'s disk."""
    filler = folder / "filler.bin"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\1" * max(0, free - leave))
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("where", ["weights", "recipe_state"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, where: str) -> None:
    base = make_base_checkpoint(tmp_path / "base")
    reference = train(base, tmp_path / "ref", TOTAL)
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "out"
        train(base, out, TOTAL, stop_after=4)
        first = latest_complete_checkpoint(out)
        assert first is not None and first.name == "step_4"
        weights = (first / "model.safetensors").stat().st_size
        # "weights": not even the weights fit; "recipe_state": the weights fit, then
        # torch.save runs out of room (torch's own text is `inline_container.cc ... unexpected pos`)
        filler = _fill(disk, 16 << 10 if where == "weights" else weights + (64 << 10))
        script = "\n".join(
            [
                f"import sys; sys.path.insert(0, {str(REPO)!r})",
                "from pathlib import Path",
                "from tests.training.test_resume_harness import train",
                "from tunesmith.config import ConfigError",
                "try:",
                f"    train(Path({str(base)!r}), Path({str(out)!r}), {TOTAL}, resume=True,"
                " save_every=1)",
                "except ConfigError as e:",
                "    print(f'error: {e}', file=sys.stderr); sys.exit(2)",
            ]
        )
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, proc.stderr[-3000:]
        assert "disk full" in lines[0] and str(out) in lines[0] and "step_4 is intact" in lines[0]
        assert "inline_container" not in lines[0]
        assert list_complete_checkpoints(out) == [first]
        assert verify_checkpoint(first) is None
        assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
        filler.unlink()
        resumed = train(base, out, TOTAL, resume=True)
    torch.testing.assert_close(
        torch.tensor(resumed), torch.tensor(reference[4:]), atol=1e-6, rtol=0
    )


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_damaged_newest_checkpoints_resume_from_the_last_intact_one(
    tmp_path: Path, lora: bool, caplog: pytest.LogCaptureFixture
) -> None:
    base = make_base_checkpoint(tmp_path / "base")
    reference = train(base, tmp_path / "ref", TOTAL, lora=lora)
    out = tmp_path / "out"
    train(base, out, 8, lora=lora, save_every=1)  # step_1 ... step_8
    newest, second = out / "step_8", out / "step_7"
    weights = newest / ("adapter/adapter_model.safetensors" if lora else "model.safetensors")
    with open(weights, "r+b") as f:  # a zeroed block in the middle of the newest weights
        f.seek(weights.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\0" * 4096)
    state_file = second / "recipe_state.pt"
    state_file.write_bytes(state_file.read_bytes()[:-512])  # the one before: truncated state
    resumed = train(base, out, TOTAL, lora=lora, resume=True)
    assert "step_8" in caplog.text and weights.name in caplog.text
    assert "step_7" in caplog.text and "recipe_state.pt" in caplog.text
    torch.testing.assert_close(
        torch.tensor(resumed), torch.tensor(reference[6:]), atol=1e-6, rtol=0
    )


def test_all_checkpoints_damaged_is_one_line(tmp_path: Path) -> None:
    base = make_base_checkpoint(tmp_path / "base")
    out = tmp_path / "out"
    train(base, out, 2, save_every=1)
    for folder in list_complete_checkpoints(out):
        (folder / "recipe_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as info:
        train(base, out, TOTAL, resume=True)
    assert "\n" not in str(info.value) and "no intact checkpoint" in str(info.value)


@pytest.mark.slow
def test_disk_full_in_a_cli_run_is_one_line_exit_2(tmp_path: Path) -> None:
    """``tunesmith run finetune`` with output_dir on a small disk: the pre-flight passes (room
    for the weights), the first intermediate save (weights + AdamW state) does not fit."""
    from tests.error_cases.checkpoint import _setup

    with _tmpfs(tmp_path / "disk", "1m") as disk:
        cfg = _setup(tmp_path, output_dir=str(disk / "out"), epochs=2)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith", "run", "finetune", "--config", str(cfg)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        # training had started, so progress lines come first; the error is one line after them
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
        assert errors[0].startswith("error: disk full while saving checkpoint epoch_1")
        assert "no earlier checkpoint exists" in errors[0] and "Traceback" not in proc.stderr
        assert not [p for p in (disk / "out").iterdir() if p.name.startswith((".tmp-", "epoch"))]
