"""DCP sharded intermediate saves beyond finetune: a DPO run split by tensor parallelism
(2 ranks) saves its own shards and resumes on one process with the uninterrupted curve; a
knowledge-distillation run resumes from its DCP folder exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.recipes.conftest import LORA
from tests.recipes.test_dpo import dpo_config, read_metrics
from tests.recipes.test_finetune_cli import _run, _write

DCP = {"intermediate_checkpoint_format": "dcp", "max_steps_per_epoch": 4,
       "save_every_n_steps": 2, "shuffle": True}  # fmt: skip


def _resume_copy(src: Path, dst: Path) -> Path:
    """A fresh output_dir holding only ``src``'s DCP folder of step 2 (as after a crash)."""
    shutil.copytree(src / "distributed" / "step_2", dst / "distributed" / "step_2")
    return dst


@pytest.mark.slow
def test_tensor_parallel_dpo_dcp_save_resumes_on_one_process(
    tiny_llama: Path, preference_data: Path, tmp_path: Path
) -> None:
    """Full DPO (policy and reference split over 2 ranks): the step-2 DCP folder holds each
    rank's shards; one process resumes it (batch 4 both times) with the same metrics."""
    ref = tmp_path / "ref"
    cfg = dpo_config(ref, tiny_llama, preference_data, tensor_parallel_dim=2, **DCP)
    _run(["run", "--nproc_per_node", "2", "dpo", "--config", str(_write(cfg, tmp_path / "a.yaml"))],
         tmp_path)  # fmt: skip
    marker = (ref / "distributed" / "step_2" / ".complete").read_text()
    assert '"world_size": 2' in marker
    run = _resume_copy(ref, tmp_path / "run")
    cfg = dpo_config(run, tiny_llama, preference_data, resume_from_checkpoint=True, **DCP)
    _run(["run", "dpo", "--config", str(_write(cfg, tmp_path / "b.yaml"))], tmp_path)
    whole, again = read_metrics(ref), read_metrics(run)
    for key in ("loss", "rewards/margins", "log_probs/chosen"):
        assert again[key] == pytest.approx(whole[key][2:], abs=1e-5), key


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.recipes.test_dpo import write_preference_data

    return write_preference_data(tmp_path_factory.mktemp("pref") / "pairs.json")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.recipes.test_knowledge_distillation import write_teacher

    return write_teacher(tmp_path_factory.mktemp("teacher"))


def test_kd_dcp_save_resumes_exactly(
    tiny_llama: Path, tiny_teacher: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """LoRA distillation: DCP at step 2 (adapters + optimizer), resumed in a fresh folder."""
    from tests.recipes.test_knowledge_distillation import kd_config
    from tunesmith.recipes.knowledge_distillation import recipe_main

    over = {**DCP, **{f"model.{k}": v for k, v in LORA.items()}}
    ref = tmp_path / "ref"
    recipe_main(OmegaConf.create(kd_config(ref, tiny_llama, tiny_teacher, instruct_data, **over)))
    assert (ref / "distributed" / "step_2" / "dcp" / ".metadata").is_file()
    assert not (ref / "step_2").exists()  # not gathered to the checkpointer's format
    run = _resume_copy(ref, tmp_path / "run")
    cfg = kd_config(run, tiny_llama, tiny_teacher, instruct_data, resume_from_checkpoint=True,
                    **over)  # fmt: skip
    recipe_main(OmegaConf.create(cfg))
    whole, again = read_metrics(ref), read_metrics(run)
    for key in ("loss", "class_loss", "kd_loss"):
        assert again[key] == pytest.approx(whole[key][2:], abs=1e-5), key
