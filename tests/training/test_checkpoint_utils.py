"""Atomic writes, checkpoint-folder markers, keep_last_n, recipe state, RNG, signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tunesmith.training.checkpointing import (
    COMPLETE_MARKER,
    GracefulShutdown,
    atomic_torch_save,
    atomic_write,
    build_recipe_state,
    capture_rng_state,
    latest_complete_checkpoint,
    list_complete_checkpoints,
    load_recipe_state,
    load_weight_files,
    prune_checkpoints,
    remove_partial_checkpoints,
    resolve_checkpoint_files,
    restore_recipe_state,
    restore_rng_state,
    save_recipe_state,
    save_sharded,
    staged_checkpoint_dir,
)

REPO = Path(__file__).resolve().parents[2]


def test_atomic_write_leaves_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"new-partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # temp file cleaned up
    atomic_torch_save({"a": torch.arange(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(3))


def test_staged_folder_marker_order_and_pruning(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        with staged_checkpoint_dir(tmp_path, f"step_{step}", step=step) as d:
            (d / "w.txt").write_text(str(step))
            # not visible under its final name until the block ends
            assert not (tmp_path / f"step_{step}").exists()
    (tmp_path / "step_9").mkdir()  # partial: no marker
    (tmp_path / "step_9" / "w.txt").write_text("partial")
    staged = tmp_path / ".tmp-step_10-123"  # killed after its marker, before the rename
    staged.mkdir()
    (staged / COMPLETE_MARKER).write_text('{"saved_at_ns": 1e30}')
    assert [p.name for p in list_complete_checkpoints(tmp_path)] == ["step_1", "step_2", "step_3"]
    assert latest_complete_checkpoint(tmp_path).name == "step_3"
    assert json.loads((tmp_path / "step_3" / COMPLETE_MARKER).read_text())["step"] == 3
    removed = prune_checkpoints(tmp_path, keep_last_n=2)
    assert [p.name for p in removed] == ["step_1"]
    assert not (tmp_path / "step_1").exists()
    assert sorted(p.name for p in remove_partial_checkpoints(tmp_path)) == [
        ".tmp-step_10-123",
        "step_9",
    ]
    # re-saving an existing name replaces it whole
    with staged_checkpoint_dir(tmp_path, "step_3", step=3) as d:
        (d / "w.txt").write_text("again")
    assert (tmp_path / "step_3" / "w.txt").read_text() == "again"
    assert latest_complete_checkpoint(tmp_path).name == "step_3"
    # an exception inside the block leaves nothing behind
    with pytest.raises(ValueError), staged_checkpoint_dir(tmp_path, "step_4") as d:
        raise ValueError
    assert not (tmp_path / "step_4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2", "step_3"]


def test_filename_format_and_sharded_roundtrip(tmp_path: Path) -> None:
    sd = {f"w{i}": torch.randn(4, 3, dtype=torch.bfloat16) for i in range(5)}
    origin = {"w0": "a.safetensors", "w1": "a.safetensors", "w2": "b.safetensors"}
    origin.update({"w3": "b.safetensors", "w4": "c.safetensors"})
    names = save_sharded(sd, tmp_path, key_to_file=origin)
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["w3"] == "model-00002-of-00003.safetensors"
    assert index["metadata"]["total_size"] == 5 * 12 * 2
    files = resolve_checkpoint_files(
        tmp_path, {"filename_format": "model-{}-of-{}.safetensors", "max_filename": "00003"}
    )
    assert [f.name for f in files] == names
    assert [
        f.name
        for f in resolve_checkpoint_files(
            tmp_path, {"filename_format": "model-{}-of-{}.safetensors", "max_filenames": 3}
        )
    ] == names
    loaded, where = load_weight_files(files)
    assert all(torch.equal(loaded[k], sd[k]) and loaded[k].dtype == torch.bfloat16 for k in sd)
    assert where["w4"] == "model-00003-of-00003.safetensors"
    assert set(load_file(tmp_path / names[0])) == {"w0", "w1"}
    with pytest.raises(FileNotFoundError, match="checkpoint_files"):
        resolve_checkpoint_files(tmp_path, ["missing.safetensors"])
    with pytest.raises(ValueError, match="filename_format"):
        resolve_checkpoint_files(tmp_path, {"max_filename": "00003"})


def test_rng_capture_restore_roundtrip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    save_recipe_state({"rng": state}, str(tmp_path / "r.pt"))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_recipe_state(str(tmp_path / "r.pt"))["rng"])  # weights_only load
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


def test_named_generators_are_captured_and_restored(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(11)
    torch.rand(3, generator=g)
    save_recipe_state(
        build_recipe_state(epochs_run=0, steps_run=1, generators={"loader": g}),
        str(tmp_path / "s.pt"),
    )
    expected = torch.rand(4, generator=g)
    fresh = torch.Generator().manual_seed(0)
    restore_recipe_state(load_recipe_state(str(tmp_path / "s.pt")), generators={"loader": fresh})
    assert torch.equal(torch.rand(4, generator=fresh), expected)


def test_recipe_state_restores_optimizer_scheduler_and_progress(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    state = build_recipe_state(
        epochs_run=1, steps_run=3, optimizer=opt, lr_scheduler=sched, seed=7, total_epochs=2
    )
    save_recipe_state(state, str(tmp_path / "recipe_state.pt"))
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (s + 1))
    loaded = load_recipe_state(str(tmp_path / "recipe_state.pt"))
    assert restore_recipe_state(loaded, optimizer=opt2, lr_scheduler=sched2) == (1, 3)
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == pytest.approx(0.025)
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    with pytest.raises(KeyError, match="intermediate_checkpoint"):
        restore_recipe_state({"optimizer": {}})


def test_graceful_shutdown_saves_then_exits_zero(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from tunesmith.training.checkpointing import GracefulShutdown
        out = {str(tmp_path)!r}
        with GracefulShutdown() as shutdown:
            for step in range(10_000):
                time.sleep(0.01)
                if step == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
                if shutdown.requested:
                    open(os.path.join(out, "saved_at"), "w").write(str(step))
                    shutdown.exit()
        sys.exit(3)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "saved_at").read_text() == "3"
    assert "SIGTERM" in proc.stderr


def test_graceful_shutdown_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGINT)
    with GracefulShutdown() as shutdown:
        assert signal.getsignal(signal.SIGINT) != before
        os.kill(os.getpid(), signal.SIGINT)
        assert shutdown.requested and shutdown.received == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) == before
