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
