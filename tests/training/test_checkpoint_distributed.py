"""DistributedCheckpointer: 2 CPU processes (gloo) save sharded DTensors with DCP, reload
them resharded, and rank 0 consolidates the result into a Hugging Face folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.training.test_resume_harness import make_base_checkpoint
from tunesmith.training import (
    DistributedCheckpointer,
    FullModelHFCheckpointer,
    build_recipe_state,
    consolidate_dcp_to_hf,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, base: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        hf = FullModelHFCheckpointer(base, ["model.safetensors"], "LLAMA3", out)
        full = hf.load_checkpoint()["model"]
        sharded = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()}
        opt_state = {
            "exp_avg": {k: distribute_tensor(v * 0.5, mesh, [Shard(0)]) for k, v in full.items()}
        }
        torch.manual_seed(100 + rank)
        ckpt = DistributedCheckpointer(out, keep_last_n_checkpoints=1)
        for step in (1, 2):
            ckpt.save_checkpoint(
                {"model": sharded, "optimizer": opt_state},
                epoch=0,
                step=step,
                recipe_state=build_recipe_state(epochs_run=0, steps_run=step),
            )
        expected_rng = torch.rand(3)  # what this rank draws right after the save
        # reload into zeroed destinations
        dest = {
            k: distribute_tensor(torch.zeros_like(v), mesh, [Shard(0)]) for k, v in full.items()
        }
        dest_opt = {
            "exp_avg": {
                k: distribute_tensor(torch.zeros_like(v), mesh, [Shard(0)]) for k, v in full.items()
            }
        }
        state = {"model": dest, "optimizer": dest_opt}
        recipe = DistributedCheckpointer(out, resume_from_checkpoint=True).load_checkpoint(state)
        assert recipe["steps_run"] == 2
        from tunesmith.training import restore_rng_state

        torch.manual_seed(0)
        restore_rng_state(recipe["rng"])
        assert torch.equal(torch.rand(3), expected_rng), "per-rank RNG state not restored"
        for k, v in full.items():
            assert torch.equal(state["model"][k].full_tensor(), v), k
            assert torch.equal(state["optimizer"]["exp_avg"][k].full_tensor(), v * 0.5), k
        dist.barrier()
        if rank == 0:
            folders = sorted(p.name for p in (Path(out) / "distributed").iterdir())
            assert folders == ["step_2"], folders  # keep_last_n_checkpoints=1
            consolidate_dcp_to_hf(Path(out) / "distributed" / "step_2", hf, epoch=0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_dcp_two_ranks_save_load_and_consolidate(tmp_path: Path) -> None:
    base = make_base_checkpoint(tmp_path / "base")
    out = tmp_path / "out"
    mp.start_processes(
        _worker,
        args=(2, _free_port(), str(base), str(out)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    written = load_file(out / "epoch_0" / "model.safetensors")
    original = load_file(base / "model.safetensors")
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)


def test_dcp_resume_skips_a_damaged_newest_checkpoint(tmp_path: Path, caplog) -> None:
    import logging

    from tunesmith.training import DistributedCheckpointer

    ckpt = DistributedCheckpointer(tmp_path)
    for step in (1, 2):
        state = {"model": {"w": torch.full((4096,), float(step))}}
        ckpt.save_checkpoint(state, epoch=0, step=step, recipe_state={"steps_run": step})
    shard = next((tmp_path / "distributed" / "step_2" / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8])
    with caplog.at_level(logging.WARNING):
        assert ckpt.latest() == tmp_path / "distributed" / "step_1"
    assert "step_2" in caplog.text and shard.name in caplog.text
    target = {"model": {"w": torch.zeros(4096)}}
    assert ckpt.load_checkpoint(target)["steps_run"] == 1
    assert torch.equal(target["model"]["w"], torch.ones(4096))


def test_loading_a_model_does_not_import_dcp() -> None:
    """DCP (and the asyncio etc. it pulls, ~3 MiB per rank) is imported by a DCP save or
    load, not by the modules the recipes load a model with (benchmarks/NOTES.md §16)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tunesmith.recipes.finetune, tunesmith.training\n"
        "from tunesmith.recipes._finetune_setup import build_model\n"
        "print('torch.distributed.checkpoint' in sys.modules)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
