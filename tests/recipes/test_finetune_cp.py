"""Context parallelism on gloo ranks gives the one-process run: the loss of every step and the
saved weights (fp32, same global batch), alone and folded into FSDP2 (``dp_shard_cp``), full
and LoRA, padded and packed; bad layouts are one line before weights load."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes.conftest import base_config
from tests.recipes.test_finetune_cli import TUNESMITH, _env, _run, _write
from tests.recipes.test_finetune_tp import _assert_same, _over, references  # noqa: F401


def _launch(tmp: Path, model_dir: Path, data: Path, mode: str, nproc: int, batch: int, **keys):
    """A torchrun launch that must say it ran context parallel (not merely replicated)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = base_config(tmp / "dist", model_dir, data, batch_size=batch, **_over(mode), **keys)
    config = str(_write(cfg, tmp / "dist.yaml"))
    proc = _run(["run", "--nproc_per_node", str(nproc), "finetune", "--config", config], tmp)
    said = f"every sequence is split over {keys['context_parallel_dim']} ranks"
    assert said in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return tmp / "dist"


@pytest.mark.slow
def test_context_parallel_matches_one_process(
    references, tiny_llama: Path, instruct_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    """context_parallel_dim=2 on 2 ranks: both read the whole batch of 4, each keeps half of
    every sequence (zigzag chunks); same losses and weights as one process (LoRA)."""
    dist = _launch(tmp_path, tiny_llama, instruct_data, "lora", 2, 4, context_parallel_dim=2)
    _assert_same(references("lora"), dist)


@pytest.mark.slow
def test_context_parallel_full_matches_one_process(
    references, tiny_llama: Path, instruct_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    dist = _launch(tmp_path, tiny_llama, instruct_data, "full", 2, 4, context_parallel_dim=2)
    _assert_same(references("full"), dist)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp_x_context_parallel_matches_one_process(
    mode: str, references, tiny_llama: Path, instruct_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    """FSDP2 2 x CP 2 on 4 ranks (batch 2 per data-parallel rank = the reference's 4): FSDP2
    shards over the flattened dp_shard x cp dim."""
    dist = _launch(tmp_path, tiny_llama, instruct_data, mode, 4, 2, context_parallel_dim=2)
    _assert_same(references(mode), dist)
