"""QLoRA under tensor parallelism on gloo ranks gives the one-process QLoRA run: the loss of
every step, the saved adapter and the merged HF folder (which transformers loads); a degree
whose pieces are not whole NF4 blocks is one line before any weights load."""

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

pytest.importorskip("torchao")

STEPS = 3
TOL = 1e-4
QLORA = {
    **{f"model.{k}": v for k, v in LORA.items()},
    "model.quantize_base": True,
    # SGD: Adam turns rounding-sized differences of near-zero gradients into lr-sized steps,
    # SGD keeps them rounding-sized, so the adapters compare at the losses' tolerance
    "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1},
    "max_steps_per_epoch": STEPS,
    "shuffle": False,
}
TOKENS = torch.tensor([[257, *b"user: Reverse and shout. apple", 10]])


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hidden 256: every 1/2 piece of every projection is whole NF4 blocks of 64."""
    from tests.recipes._recipe_toys import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("wide_llama"), hidden_size=256)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, wide_llama: Path, instruct_data: Path):
    """1 process x batch 4: the reference QLoRA run."""
    tmp = tmp_path_factory.mktemp("qlora_single")
    cfg = base_config(tmp / "out", wide_llama, instruct_data, batch_size=4, **QLORA)
    _run(["run", "finetune", "--config", str(_write(cfg, tmp / "single.yaml"))], tmp)
    return tmp / "out"


def _assert_same_run(single: Path, dist: Path) -> None:
    assert read_losses(dist) == pytest.approx(read_losses(single), abs=TOL)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(single / "epoch_1" / name), load_file(dist / "epoch_1" / name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
            assert (a[key] - b[key]).abs().max() <= TOL, f"{name}: {key}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("nproc", "batch", "keys"),
    [
        (2, 4, {"tensor_parallel_dim": 2}),  # TP 2 (data_parallel_shard_dim 1: FSDP x TP 1 x 2)
        (4, 2, {"tensor_parallel_dim": 2}),  # FSDP2 2 x TP 2
        (2, 4, {"tensor_parallel_dim": 2, "sequence_parallel": True}),  # rowwise reduce-scatter
    ],
    ids=["tp2", "fsdp2xtp2", "tp2-sp"],
)
def test_qlora_tensor_parallel_matches_one_process(
    nproc: int,
    batch: int,
    keys: dict[str, Any],
    single: Path,
    wide_llama: Path,
    instruct_data: Path,
    tmp_path: Path,
) -> None:
    """Each rank holds its piece of the whole weight's NF4 quantization (the same dequantized
    values as one process); losses, merged weights and adapter equal the one-process run, and
    the merged folder loads in transformers with the same logits as the one-process one."""
    transformers = pytest.importorskip("transformers")
    cfg = base_config(tmp_path / "out", wide_llama, instruct_data, batch_size=batch, **QLORA)
    config = str(_write({**cfg, **keys}, tmp_path / "dist.yaml"))
    _run(["run", "--nproc_per_node", str(nproc), "finetune", "--config", config], tmp_path)
    dist = tmp_path / "out"
    _assert_same_run(single, dist)
    with torch.no_grad():
        logits = [
            transformers.LlamaForCausalLM.from_pretrained(out / "epoch_1").eval()(TOKENS).logits
            for out in (single, dist)
        ]
    assert (logits[0] - logits[1]).abs().max() <= 1e-3  # logits up to ~5: relative 2e-4


def test_degree_breaking_nf4_blocks_is_one_line(tiny_llama: Path, instruct_data: Path) -> None:
    """hidden 64: output_proj's 1/2 column piece is 32 values per row, not a whole NF4 block:
    the layout check (a meta build only, before the checkpoint is read) names the layer and
    the key."""
    from tunesmith.config import ConfigError
    from tunesmith.recipes._parallel_setup import parallel_layout

    cfg = OmegaConf.create(
        base_config(Path("/unused"), tiny_llama, instruct_data, tensor_parallel_dim=2)
    )
    for key, value in {**LORA, "quantize_base": True}.items():
        cfg.model[key] = value
    with pytest.raises(ConfigError, match="not a whole number of NF4 blocks of 64") as err:
        parallel_layout(cfg, 2, torch.device("cpu"), context_parallel=True)
    assert "\n" not in str(err.value) and "layers.0.attn.output_proj" in str(err.value)
    assert err.value.key == "tensor_parallel_dim"


@pytest.mark.slow
def test_degree_breaking_nf4_blocks_exits_2_under_torchrun(
    tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """The same mistake launched for real on 2 ranks: one ``error:`` line, exit 2, no
    traceback, nothing written."""
    cfg = base_config(tmp_path / "out", tiny_llama, instruct_data, **QLORA)
    config = str(_write({**cfg, "tensor_parallel_dim": 2}, tmp_path / "bad.yaml"))
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
    assert len(errors) == 1 and "NF4 blocks of 64" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "epoch_1").exists()


def test_qdora_under_tensor_parallel_is_one_line(wide_llama: Path, instruct_data: Path) -> None:
    from tunesmith.config import ConfigError
    from tunesmith.recipes._parallel_setup import parallel_layout

    cfg = OmegaConf.create(
        base_config(Path("/unused"), wide_llama, instruct_data, tensor_parallel_dim=2)
    )
    for key, value in {**LORA, "quantize_base": True, "use_dora": True}.items():
        cfg.model[key] = value
    with pytest.raises(ConfigError, match="DoRA on NF4 weights") as err:
        parallel_layout(cfg, 2, torch.device("cpu"), context_parallel=True)
    assert "\n" not in str(err.value) and err.value.key == "model"
