"""Tensor parallelism, FSDP2 x TP and HSDP on gloo ranks give the one-process run: the loss of
every step and the saved weights (fp32, same global batch); bad layouts are one line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.recipes.conftest import LORA, base_config, read_losses
from tests.recipes.test_finetune_cli import TUNESMITH, _env, _run, _write

STEPS = 3
TOL = 1e-4


def _over(mode: str) -> dict[str, Any]:
    over: dict[str, Any] = {"max_steps_per_epoch": STEPS, "shuffle": False}
    if mode in ("lora", "dora"):
        over.update({f"model.{k}": v for k, v in LORA.items()})
    if mode == "dora":
        over["model.use_dora"] = True
    return over


def _single(tmp: Path, model_dir: Path, data: Path, mode: str) -> Path:
    """1 process x batch 4: the reference run."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = base_config(tmp / "single", model_dir, data, batch_size=4, **_over(mode))
    _run(["run", "finetune", "--config", str(_write(cfg, tmp / "single.yaml"))], tmp)
    return tmp / "single"


def _launch(tmp: Path, model_dir: Path, data: Path, mode: str, nproc: int, batch: int, **keys):
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = base_config(tmp / "dist", model_dir, data, batch_size=batch, **_over(mode), **keys)
    config = str(_write(cfg, tmp / "dist.yaml"))
    _run(["run", "--nproc_per_node", str(nproc), "finetune", "--config", config], tmp)
    return tmp / "dist"


def _assert_same(single: Path, dist: Path) -> None:
    assert read_losses(dist) == pytest.approx(read_losses(single), abs=TOL)
    a = load_file(single / "epoch_1" / "model.safetensors")
    b = load_file(dist / "epoch_1" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert (a[key] - b[key]).abs().max() <= TOL, key


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, instruct_data: Path):
    """The one-process run of each mode, made once for every layout below."""
    made: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in made:
            made[mode] = _single(
                tmp_path_factory.mktemp(f"ref_{mode}"), tiny_llama, instruct_data, mode
            )
        return made[mode]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora", "dora"])
def test_tensor_parallel_matches_one_process(
    mode: str, references, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """tensor_parallel_dim=2 on 2 ranks (no data parallelism: both read the whole batch of 4):
    heads, MLP columns and vocabulary split, LoRA adapters too; DoRA magnitudes split with
    colwise rows (rowwise: replicated, the row norms reduced over the split input dim by
    DTensor); same losses and weights."""
    dist = _launch(tmp_path, tiny_llama, instruct_data, mode, 2, 4, tensor_parallel_dim=2)
    _assert_same(references(mode), dist)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "nproc", "keys"),
    [
        ("full", 4, {"tensor_parallel_dim": 2}),  # FSDP2 2 x TP 2
        ("lora", 2, {"data_parallel_replicate_dim": 2}),  # HSDP: 2 replicas of 1 shard
        ("lora", 4, {"data_parallel_replicate_dim": 2, "tensor_parallel_dim": 2}),
    ],
    ids=["fsdp2xtp2-full", "hsdp2-lora", "hsdp2xtp2-lora"],
)
def test_data_parallel_meshes_match_one_process(
    mode: str,
    nproc: int,
    keys: dict[str, int],
    references,
    tiny_llama: Path,
    instruct_data: Path,
    tmp_path: Path,
) -> None:
    """Two data-parallel ranks x batch 2 (= the reference's batch 4), with TP inside."""
    dist = _launch(tmp_path, tiny_llama, instruct_data, mode, nproc, 2, **keys)
    _assert_same(references(mode), dist)


@pytest.mark.slow
def test_tied_embeddings_under_tensor_parallel(instruct_data: Path, tmp_path: Path) -> None:
    """A tied output projects with the vocabulary-split embedding and gathers the logits."""
    from tests.recipes._recipe_toys import write_tiny_llama

    tied = write_tiny_llama(tmp_path / "tied", tied=True)
    single = _single(tmp_path / "a", tied, instruct_data, "full")
    dist = _launch(tmp_path / "b", tied, instruct_data, "full", 2, 4, tensor_parallel_dim=2)
    _assert_same(single, dist)


def test_mesh_not_matching_world_size_is_one_line(
    tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """tensor_parallel_dim=3 on 2 processes: one ``error:`` line naming the key, exit 2, and no
    weights loaded (the check runs before the checkpoint is read)."""
    cfg = base_config(tmp_path / "out", tiny_llama, instruct_data, tensor_parallel_dim=3)
    config = str(_write(cfg, tmp_path / "bad.yaml"))
    proc = subprocess.run(
        [*TUNESMITH, "run", "--nproc_per_node", "2", "finetune", "--config", config],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "tensor_parallel_dim=3" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("keys", "world", "message"),
    [
        ({"tensor_parallel_dim": 4}, 4, "does not divide the attention heads"),  # 2 kv heads
        ({"tensor_parallel_dim": 3}, 4, "does not divide the world size 4"),
        ({"tensor_parallel_dim": 2, "data_parallel_shard_dim": 4}, 4, "does not match"),
        ({"data_parallel_replicate_dim": 0}, 2, "data_parallel_replicate_dim=0"),
        ({"tensor_parallel_dim": "two"}, 2, "is not an integer"),
    ],
)
def test_bad_layouts_are_config_errors(
    keys: dict[str, Any], world: int, message: str, tiny_llama: Path, instruct_data: Path
) -> None:
    from tunesmith.config import ConfigError
    from tunesmith.recipes._parallel_setup import parallel_layout

    cfg = OmegaConf.create(base_config(Path("/unused"), tiny_llama, instruct_data, **keys))
    with pytest.raises(ConfigError, match=message) as err:
        parallel_layout(cfg, world, torch.device("cpu"), context_parallel=True)
    assert "\n" not in str(err.value)


def test_default_plan_covers_every_projection(tiny_llama: Path) -> None:
    """The per-layer-type plan names every attention and MLP projection of the model, the
    embeddings and the output (LoRA layers included), from the module structure alone; the
    pattern form (torchtune 0.6.1 calls the plan function with no model) matches the same."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from tunesmith.models import build_from_hf
    from tunesmith.training.tensor_parallel import _expand, decoder_tp_plan

    with torch.device("meta"):
        model = build_from_hf(str(tiny_llama), **{k: v for k, v in LORA.items()})
    plan = decoder_tp_plan(model)
    for i in range(2):
        for name in ("q_proj", "k_proj", "v_proj"):
            assert type(plan[f"layers.{i}.attn.{name}"]) is ColwiseParallel
        assert type(plan[f"layers.{i}.attn.output_proj"]) is RowwiseParallel
        assert type(plan[f"layers.{i}.mlp.w1"]) is ColwiseParallel
        assert type(plan[f"layers.{i}.mlp.w3"]) is ColwiseParallel
        assert type(plan[f"layers.{i}.mlp.w2"]) is RowwiseParallel
    assert {"tok_embeddings", "output"} <= plan.keys()
    assert _expand(model, decoder_tp_plan()).keys() == plan.keys()


TORCHTUNE_TP_CONFIGS = [
    ("v0.6.1", "llama3/70B_full", None),
    ("v0.6.1", "llama3_1/70B_full", None),
    ("v0.6.1", "llama3_3/70B_full", None),
    ("v0.6.1", "llama3_1/405B_qlora", None),
    ("HEAD", "llama3_3/70B_full_multinode", "finetune"),  # launched by sbatch: no recipe line
]


@pytest.mark.parametrize(("ref", "name", "recipe"), TORCHTUNE_TP_CONFIGS)
def test_torchtune_tensor_parallel_configs_validate(
    ref: str, name: str, recipe: str | None, tmp_path: Path
) -> None:
    """torchtune's 70B / 405B configs (tensor_parallel_plan, data_parallel_*_dim) validate
    unchanged, read from the torchtune source mirror (skipped where it is absent)."""
    from tunesmith.cli.main import main

    mirror = Path("/work/.mirror/pytorch+torchtune/repo")
    shown = subprocess.run(
        ["git", "-C", str(mirror), "show", f"{ref}:recipes/configs/{name}.yaml"],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        pytest.skip(f"torchtune mirror or {ref}:{name} not available")
    path = tmp_path / f"{name.replace('/', '_')}.yaml"
    path.write_text(shown.stdout)
    args = ["validate", str(path), *(["--recipe", recipe] if recipe else [])]
    assert main(args) == 0


@pytest.mark.slow
def test_two_nodes_over_loopback_match_one_process(
    references, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """Two `tunesmith run --nnodes 2 --nproc_per_node 1` launchers ("nodes") meet through a
    c10d rendezvous on 127.0.0.1, train (batch 2 each = the reference's 4) and save."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = base_config(tmp_path / "dist", tiny_llama, instruct_data, batch_size=2, **_over("lora"))
    config = str(_write(cfg, tmp_path / "dist.yaml"))
    launchers = [
        subprocess.Popen(
            [
                *TUNESMITH,
                "run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "loopback",
                "finetune",
                "--config",
                config,
            ],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    for proc in launchers:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
    _assert_same(references("lora"), tmp_path / "dist")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "nproc", "batch"),
    [("full", 2, 4), ("lora", 2, 4), ("dora", 2, 4), ("lora", 4, 2)],
    ids=["full", "lora", "dora", "fsdp2xtp2-lora"],
)
def test_sequence_parallel_matches_one_process(
    mode: str,
    nproc: int,
    batch: int,
    references,
    tiny_llama: Path,
    instruct_data: Path,
    tmp_path: Path,
) -> None:
    """sequence_parallel=True with tensor_parallel_dim=2: the residual stream split along the
    sequence between the layers (norms on the shard, blocks all-gather, rowwise projections
    reduce-scatter); same losses over every step and weights as one process. LoRA / DoRA:
    the frozen norms torch's SequenceParallel re-registers stay frozen."""
    dist = _launch(
        tmp_path, tiny_llama, instruct_data, mode, nproc, batch, tensor_parallel_dim=2,
        sequence_parallel=True,
    )  # fmt: skip
    _assert_same(references(mode), dist)


def test_sequence_parallel_plan_per_layer_type(tiny_llama: Path) -> None:
    """The sequence-parallel plan comes from the same per-layer-type table: norms
    SequenceParallel, blocks gather their input, rowwise projections reduce-scatter along
    the sequence; without tensor parallelism the key is one line."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import RowwiseParallel, SequenceParallel

    from tunesmith.config import ConfigError
    from tunesmith.models import build_from_hf
    from tunesmith.recipes._parallel_setup import parallel_layout
    from tunesmith.training.tensor_parallel import (
        GatherSequence,
        ScatterSequence,
        decoder_tp_plan,
    )

    with torch.device("meta"):
        model = build_from_hf(str(tiny_llama))
    plan = decoder_tp_plan(model, sequence_parallel=True)
    for i in range(2):
        for norm in ("sa_norm", "mlp_norm"):
            assert type(plan[f"layers.{i}.{norm}"]) is SequenceParallel
        for block in ("attn", "mlp"):
            assert isinstance(plan[f"layers.{i}.{block}"], GatherSequence)
        for name in ("attn.output_proj", "mlp.w2"):
            style = plan[f"layers.{i}.{name}"]
            assert type(style) is RowwiseParallel and style.output_layouts == (Shard(1),)
    assert isinstance(plan["layers.0"], ScatterSequence) and "layers.1" not in plan
    assert isinstance(plan["norm"], SequenceParallel)
    cfg = OmegaConf.create(
        base_config(Path("/unused"), tiny_llama, Path("/unused"), sequence_parallel=True)
    )
    with pytest.raises(ConfigError, match="set tensor_parallel_dim > 1") as err:
        parallel_layout(cfg, 1, torch.device("cpu"), context_parallel=True)
    assert "\n" not in str(err.value)
    with torch.device("meta"):
        lora = build_from_hf(str(tiny_llama), **LORA)
    assert decoder_tp_plan(lora, sequence_parallel=True).keys() == plan.keys()
