"""finetune with ``expert_parallel_dim: 2`` on 2 gloo ranks (experts split over the ranks,
all-to-all token dispatch, the rest FSDP2-sharded) equals one process: losses, saved weights
and the PEFT adapter with LoRA on the experts; a bad degree is one line before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.recipes.conftest import base_config
from tests.recipes.test_finetune_fsdp import _assert_same
from tests.recipes.test_finetune_moe import tiny_moe  # noqa: F401  (fixture)

pytest.importorskip("transformers")


def _over(model_dir: Path, **extra) -> dict:
    return {
        "model": {"_component_": "tunesmith.models.from_hf", "checkpoint_dir": str(model_dir)},
        "checkpointer.model_type": "QWEN3_MOE",
        **extra,
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lora", "clip"),
    [(False, None), (True, None), (False, 0.05)],
    ids=["full", "lora_experts", "full_clipped"],
)
def test_expert_parallel_finetune_equals_one_process(
    tiny_moe,  # noqa: F811
    instruct_data,
    tmp_path,
    lora,
    clip,
):
    """(``full_clipped``: ``clip_grad_norm`` small enough to clip every step: the global norm
    counts each rank's expert slices once, so the clipped steps equal one process's.)"""
    from safetensors.torch import load_file

    from tests.recipes.test_finetune_cli import _run, _write

    extra: dict = {"clip_grad_norm": clip} if clip else {}
    if lora:
        extra |= {
            "model.lora_attn_modules": ["q_proj", "v_proj"],
            "model.apply_lora_to_mlp": True,
            "model.lora_rank": 4,
            "model.lora_alpha": 8,
        }
    over = {"max_steps_per_epoch": 3, "shuffle": False, **_over(tiny_moe, **extra)}
    single = base_config(tmp_path / "single", tiny_moe, instruct_data, batch_size=4, **over)
    ep = base_config(
        tmp_path / "ep", tiny_moe, instruct_data, batch_size=2, expert_parallel_dim=2, **over
    )
    _run(["run", "finetune", "--config", str(_write(single, tmp_path / "single.yaml"))], tmp_path)
    launch = ["run", "--nproc_per_node", "2", "finetune", "--config"]
    proc = _run([*launch, str(_write(ep, tmp_path / "ep.yaml"))], tmp_path)
    assert "experts of every MoE layer split over 2 ranks" in proc.stdout + proc.stderr
    _assert_same(tmp_path / "single", tmp_path / "ep", tol=1e-4)
    if clip:
        import json

        rows = (tmp_path / "ep" / "logs" / "log.jsonl").read_text().splitlines()
        norms = [json.loads(r)["grad_norm"] for r in rows if "grad_norm" in json.loads(r)]
        assert norms and all(n > clip for n in norms)  # every step clipped
    if lora:
        a = load_file(tmp_path / "single" / "epoch_1" / "adapter" / "adapter_model.safetensors")
        b = load_file(tmp_path / "ep" / "epoch_1" / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-3 for k in a)


@pytest.mark.slow
def test_expert_parallel_with_hsdp_equals_one_process(tiny_moe, instruct_data, tmp_path):  # noqa: F811
    """EP=2 over 2 ranks that HSDP replicates (``data_parallel_replicate_dim: 2``: the
    non-expert weights are replicated by torch's FSDP2 over a (replicate, shard) mesh, the
    experts split over the ranks), with clipping: losses and saved weights equal one process."""
    from tests.recipes.test_finetune_cli import _run, _write

    over = {
        "max_steps_per_epoch": 3, "shuffle": False, "clip_grad_norm": 0.05, **_over(tiny_moe),
    }  # fmt: skip
    single = base_config(tmp_path / "single", tiny_moe, instruct_data, batch_size=4, **over)
    ep = base_config(
        tmp_path / "ep", tiny_moe, instruct_data, batch_size=2, expert_parallel_dim=2,
        data_parallel_replicate_dim=2, **over,
    )  # fmt: skip
    _run(["run", "finetune", "--config", str(_write(single, tmp_path / "single.yaml"))], tmp_path)
    launch = ["run", "--nproc_per_node", "2", "finetune", "--config"]
    proc = _run([*launch, str(_write(ep, tmp_path / "ep.yaml"))], tmp_path)
    assert "experts of every MoE layer split over 2 ranks" in proc.stdout + proc.stderr
    _assert_same(tmp_path / "single", tmp_path / "ep", tol=1e-4)


def test_expert_parallel_degree_errors_are_one_line(tiny_moe, instruct_data, tmp_path):  # noqa: F811
    import torch

    from tunesmith.config import ConfigError
    from tunesmith.recipes._parallel_setup import parallel_layout

    cfg = OmegaConf.create(base_config(tmp_path, tiny_moe, instruct_data, **_over(tiny_moe)))
    cfg.expert_parallel_dim = 3
    with pytest.raises(ConfigError, match="expert_parallel_dim=3 does not divide num_experts=4"):
        parallel_layout(cfg, 3, torch.device("cpu"), context_parallel=True)
    cfg.expert_parallel_dim = 2
    with pytest.raises(ConfigError, match="expert_parallel_dim=2 with 4 processes"):
        parallel_layout(cfg, 4, torch.device("cpu"), context_parallel=True)
    cfg.enable_async_checkpointing = True
    with pytest.raises(ConfigError, match="expert_parallel_dim=2 with enable_async_checkpointing"):
        parallel_layout(cfg, 2, torch.device("cpu"), context_parallel=True)
    cfg.enable_async_checkpointing = False
    cfg.optimizer_in_bwd = True
    with pytest.raises(ConfigError, match="expert_parallel_dim=2 with optimizer_in_bwd"):
        parallel_layout(cfg, 2, torch.device("cpu"), context_parallel=True)


@pytest.mark.slow
def test_expert_parallel_resume_equals_uninterrupted(tiny_moe, instruct_data, tmp_path):  # noqa: F811
    """EP=2 with clipping: a run resumed from its step-2 checkpoint (the expert slices'
    optimizer state gathered on save, cut back on load) logs the uninterrupted run's losses;
    and the same checkpoint resumes in one process (world-size independent format)."""
    import shutil

    from tests.recipes.conftest import read_losses
    from tests.recipes.test_finetune_cli import _run, _write

    over = {
        "max_steps_per_epoch": 4, "save_every_n_steps": 2, "batch_size": 2, "shuffle": False,
        "clip_grad_norm": 0.05, "optimizer.lr": 1e-2, **_over(tiny_moe),
    }  # fmt: skip
    launch = ["run", "--nproc_per_node", "2", "finetune", "--config"]
    whole = base_config(tmp_path / "whole", tiny_moe, instruct_data, expert_parallel_dim=2, **over)
    _run([*launch, str(_write(whole, tmp_path / "whole.yaml"))], tmp_path)
    cut = base_config(tmp_path / "cut", tiny_moe, instruct_data, expert_parallel_dim=2, **over)
    _run([*launch, str(_write(cut, tmp_path / "cut.yaml"))], tmp_path)
    shutil.rmtree(tmp_path / "cut" / "epoch_1")
    (tmp_path / "cut" / "logs" / "log.jsonl").unlink()
    shutil.copytree(tmp_path / "cut", tmp_path / "single")  # the same step-2 checkpoint
    cut["resume_from_checkpoint"] = True
    _run([*launch, str(_write(cut, tmp_path / "cut.yaml"))], tmp_path)
    expected = read_losses(tmp_path / "whole")
    assert read_losses(tmp_path / "cut") == pytest.approx(expected[2:], abs=1e-5)
    single = base_config(
        tmp_path / "single", tiny_moe, instruct_data, batch_size=4, resume_from_checkpoint=True,
        **{k: v for k, v in over.items() if k != "batch_size"},
    )  # fmt: skip
    _run(["run", "finetune", "--config", str(_write(single, tmp_path / "single.yaml"))], tmp_path)
    assert read_losses(tmp_path / "single") == pytest.approx(expected[2:], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora_experts"])
def test_expert_parallel_dcp_resume_equals_uninterrupted(tiny_moe, instruct_data, tmp_path, lora):  # noqa: F811
    """EP=2 with ``intermediate_checkpoint_format: dcp``: the expert slices and their optimizer
    state are written as one ``[E, ...]`` tensor each (DTensors over the expert group), so a
    run resumed from the step-2 DCP folder logs the uninterrupted run's losses, and the same
    folder resumes in one process (resharded by DCP)."""
    import shutil

    from tests.recipes.conftest import read_losses
    from tests.recipes.test_finetune_cli import _run, _write

    extra: dict = {}
    if lora:
        extra = {
            "model.lora_attn_modules": ["q_proj", "v_proj"], "model.apply_lora_to_mlp": True,
            "model.lora_rank": 4, "model.lora_alpha": 8,
        }  # fmt: skip
    over = {
        "max_steps_per_epoch": 4, "save_every_n_steps": 2, "batch_size": 2, "shuffle": False,
        "optimizer.lr": 1e-2, **_over(tiny_moe, **extra),
    }  # fmt: skip
    over["intermediate_checkpoint_format"] = "dcp"
    launch = ["run", "--nproc_per_node", "2", "finetune", "--config"]
    whole = base_config(tmp_path / "whole", tiny_moe, instruct_data, expert_parallel_dim=2, **over)
    _run([*launch, str(_write(whole, tmp_path / "whole.yaml"))], tmp_path)
    cut = base_config(tmp_path / "cut", tiny_moe, instruct_data, expert_parallel_dim=2, **over)
    _run([*launch, str(_write(cut, tmp_path / "cut.yaml"))], tmp_path)
    shutil.rmtree(tmp_path / "cut" / "epoch_1")
    (tmp_path / "cut" / "logs" / "log.jsonl").unlink()
    assert (tmp_path / "cut" / "distributed").is_dir()
    shutil.copytree(tmp_path / "cut", tmp_path / "single")  # the same step-2 DCP folder
    cut["resume_from_checkpoint"] = True
    _run([*launch, str(_write(cut, tmp_path / "cut.yaml"))], tmp_path)
    expected = read_losses(tmp_path / "whole")
    assert read_losses(tmp_path / "cut") == pytest.approx(expected[2:], abs=1e-5)
    single = base_config(
        tmp_path / "single", tiny_moe, instruct_data, batch_size=4, resume_from_checkpoint=True,
        **{k: v for k, v in over.items() if k != "batch_size"},
    )  # fmt: skip
    _run(["run", "finetune", "--config", str(_write(single, tmp_path / "single.yaml"))], tmp_path)
    assert read_losses(tmp_path / "single") == pytest.approx(expected[2:], abs=1e-4)
