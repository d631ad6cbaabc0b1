"""Sharded (DCP) intermediate checkpoints of finetune: written by every rank, resumed at any
world size with the uninterrupted run's losses, published only when whole (async saves
too), consolidated on demand into a Hugging Face folder that transformers loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.recipes.conftest import LORA, base_config, read_losses

STEPS = 4
SCHEDULE = {
    "_component_": "tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup",
    "num_warmup_steps": 1,
}


def _cfg(out: Path, model_dir: Path, data: Path, **over) -> dict:
    over = {"max_steps_per_epoch": STEPS, "save_every_n_steps": 2, "shuffle": True, **over}
    return base_config(out, model_dir, data, **over)


def _resume_copy(src: Path, dst: Path, step: int = 2) -> Path:
    """A fresh output_dir holding only ``src``'s DCP folder of ``step`` (as after a crash)."""
    shutil.copytree(src / "distributed" / f"step_{step}", dst / "distributed" / f"step_{step}")
    return dst


def _run_inprocess(cfg: dict) -> None:
    from tunesmith.recipes.finetune import recipe_main

    recipe_main(OmegaConf.create(cfg))


@pytest.mark.parametrize("mode", ["full", "lora", "async"])
def test_dcp_intermediate_resumes_exactly(
    mode: str, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    over: dict = {"intermediate_checkpoint_format": "dcp", "lr_scheduler": SCHEDULE}
    if mode == "lora":
        over.update({f"model.{k}": v for k, v in LORA.items()})
    if mode == "async":
        over = {"enable_async_checkpointing": True}
    ref = tmp_path / "ref"
    _run_inprocess(_cfg(ref, tiny_llama, instruct_data, **over))
    folder = ref / "distributed" / "step_2"
    assert (folder / ".complete").is_file() and (folder / "dcp" / ".metadata").is_file()
    assert (ref / "epoch_1" / "model.safetensors").is_file()  # the final save: HF format
    assert not (ref / "step_2").exists()  # the intermediate save was not gathered to HF
    run = _resume_copy(ref, tmp_path / "run")
    _run_inprocess(_cfg(run, tiny_llama, instruct_data, resume_from_checkpoint=True, **over))
    assert read_losses(run) == pytest.approx(read_losses(ref)[2:], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("saved_on,resumed_on", [(2, 1), (1, 2)], ids=["2to1", "1to2"])
def test_dcp_resume_at_another_world_size(
    saved_on: int, resumed_on: int, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """A DCP folder written by 2 ranks (their own shards, nothing gathered) resumes on 1
    process and vice versa; the global batch stays 4, so the curve is the uninterrupted one."""
    from tests.recipes.test_finetune_cli import _run, _write

    over = {"intermediate_checkpoint_format": "dcp", "lr_scheduler": SCHEDULE}

    def launch(out: Path, nproc: int, **more) -> None:
        cfg = _cfg(out, tiny_llama, instruct_data, batch_size=4 // nproc, **over, **more)
        path = _write(cfg, tmp_path / f"{out.name}.yaml")
        _run(["run", *(["--nproc_per_node", str(nproc)] if nproc > 1 else []), "finetune",
              "--config", str(path)], tmp_path)  # fmt: skip

    ref = tmp_path / "ref"
    launch(ref, saved_on)
    marker = (ref / "distributed" / "step_2" / ".complete").read_text()
    assert f'"world_size": {saved_on}' in marker
    run = _resume_copy(ref, tmp_path / "run")
    launch(run, resumed_on, resume_from_checkpoint=True)
    assert read_losses(run) == pytest.approx(read_losses(ref)[2:], abs=1e-5)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_consolidate_loads_in_transformers_with_equal_logits(
    lora: bool, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """`tunesmith consolidate` of the DCP step_2 folder == the HF step_2 folder the same run
    writes without DCP: transformers loads both, and their logits agree."""
    import torch
    import transformers

    from tunesmith.cli.main import main

    over: dict = {f"model.{k}": v for k, v in LORA.items()} if lora else {}
    _run_inprocess(_cfg(tmp_path / "hf", tiny_llama, instruct_data, **over))
    dcp_run = tmp_path / "dcp"
    _run_inprocess(_cfg(dcp_run, tiny_llama, instruct_data, intermediate_checkpoint_format="dcp",
                        **over))  # fmt: skip
    assert main(["consolidate", str(dcp_run), "--output_dir", str(tmp_path / "out")]) == 0
    # the newest DCP folder of the run is step_2 (the run's last save is its final HF one)
    ours = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "step_2")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "step_2")
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens).logits, theirs(tokens).logits, atol=1e-5, rtol=0)
    if lora:
        assert (tmp_path / "out" / "step_2" / "adapter" / "adapter_config.json").is_file()
    assert main(["consolidate", str(dcp_run), "--output_dir", str(tmp_path / "o2"),
                 "--format", "meta"]) == 2  # fmt: skip


_KILLED_SAVE = """
import os, sys, time, torch
import torch.distributed.checkpoint.filesystem as fs
from tunesmith.training import DistributedCheckpointer
ckpt = DistributedCheckpointer(sys.argv[1], async_save=True)
ckpt.save_checkpoint({"model": {"w": torch.ones(64)}}, 0, step=1, recipe_state={"steps_run": 1})
ckpt.finish()
write = fs.FileSystemWriter.write_data
def slow(self, *a, **k):
    time.sleep(30)
    return write(self, *a, **k)
fs.FileSystemWriter.write_data = slow
ckpt.save_checkpoint({"model": {"w": torch.full((64,), 2.0)}}, 0, step=2,
                     recipe_state={"steps_run": 2})
time.sleep(1.0)
print("killed mid-save", flush=True)
os._exit(9)
"""


def test_killed_async_save_is_never_taken_for_complete(tmp_path: Path) -> None:
    """A process killed while its async save writes leaves only a `.tmp-step_2` folder:
    resume takes step_1, and the next save clears the leftover."""
    import os
    import subprocess
    import sys

    import torch

    from tunesmith.training import DistributedCheckpointer

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 9 and "killed mid-save" in proc.stdout, proc.stderr[-2000:]
    root = tmp_path / "distributed"
    assert (root / ".tmp-step_2").is_dir() and not (root / "step_2").exists()
    ckpt = DistributedCheckpointer(tmp_path, async_save=True)
    assert ckpt.latest() == root / "step_1"
    target = {"model": {"w": torch.zeros(64)}}
    assert ckpt.load_checkpoint(target)["steps_run"] == 1
    assert torch.equal(target["model"]["w"], torch.ones(64))
    ckpt.save_checkpoint({"model": {"w": torch.ones(64)}}, 0, step=3)
    assert not (root / ".tmp-step_2").exists() and not (root / "step_3").exists()  # pending
    ckpt.finish()
    assert ckpt.latest() == root / "step_3"
