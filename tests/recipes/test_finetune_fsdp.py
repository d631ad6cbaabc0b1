"""FSDP2 finetunes on 2 gloo ranks equal one process: QLoRA (NF4 shards, merged save), DoRA,
tied embeddings sharded on their own; the model is built on meta and sharded before any
weight is materialised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.recipes.conftest import LORA, base_config, read_losses
from tests.recipes.test_finetune_cli import _run, _write

STEPS = 3


def _pair(tmp_path: Path, model_dir: Path, data: Path, **over) -> tuple[Path, Path]:
    """Run 1 process x batch 4 and 2 ranks x batch 2 on the same config; their output dirs."""
    over = {"max_steps_per_epoch": STEPS, "shuffle": False, **over}
    single = base_config(tmp_path / "single", model_dir, data, batch_size=4, **over)
    dist = base_config(tmp_path / "dist", model_dir, data, batch_size=2, **over)
    _run(["run", "finetune", "--config", str(_write(single, tmp_path / "single.yaml"))], tmp_path)
    launch = ["run", "--nproc_per_node", "2", "finetune", "--config"]
    _run([*launch, str(_write(dist, tmp_path / "dist.yaml"))], tmp_path)
    return tmp_path / "single", tmp_path / "dist"


def _assert_same(single: Path, dist: Path, tol: float) -> None:
    assert read_losses(dist) == pytest.approx(read_losses(single), abs=tol)
    a = load_file(single / "epoch_1" / "model.safetensors")
    b = load_file(dist / "epoch_1" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert (a[key].float() - b[key].float()).abs().max() <= tol, key


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.recipes._recipe_toys import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("wide_llama"), hidden_size=256)


@pytest.mark.slow
@pytest.mark.parametrize("dora", [False, True], ids=["qlora", "qdora"])
def test_qlora_two_ranks_save_merged_like_one_process(
    dora: bool, wide_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """The gathered state dict held NF4 tensors and the merge crashed (issue 18.1); now the
    merged weights and the adapter equal the single-process run's."""
    over = {f"model.{k}": v for k, v in LORA.items()}
    over.update({"model.quantize_base": True, "model.use_dora": dora, "optimizer.lr": 1e-2})
    single, dist = _pair(tmp_path, wide_llama, instruct_data, **over)
    _assert_same(single, dist, tol=1e-4)
    a = load_file(single / "epoch_1" / "adapter" / "adapter_model.safetensors")
    b = load_file(dist / "epoch_1" / "adapter" / "adapter_model.safetensors")
    # Adam turns float-rounding differences of near-zero gradients into lr-sized steps
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-3 for k in a)


@pytest.mark.slow
def test_tied_embeddings_sharded_on_their_own(instruct_data: Path, tmp_path: Path) -> None:
    """``custom_sharded_layers: [tok_embeddings]`` with a tied output failed with mixed
    Tensor/DTensor (issue 18.8)."""
    from tests.recipes._recipe_toys import write_tiny_llama

    tied = write_tiny_llama(tmp_path / "tied", tied=True)
    single, dist = _pair(
        tmp_path, tied, instruct_data, custom_sharded_layers=["tok_embeddings", "output"]
    )
    _assert_same(single, dist, tol=1e-4)


def test_model_is_meta_until_sharded(
    tiny_llama: Path, instruct_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_model under FSDP2 never materialises an un-sharded parameter: they are all on
    meta when sharding starts, and afterwards each is a DTensor holding its shard (a 1-rank
    gloo group stands in for N ranks)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from tunesmith.recipes import _finetune_setup
    from tunesmith.training.meta_init import meta_tensors

    cfg = OmegaConf.create(
        base_config(
            tmp_path, tiny_llama, instruct_data, **{f"model.{k}": v for k, v in LORA.items()}
        )
    )
    seen: dict[str, object] = {}
    real_shard = _finetune_setup._shard

    def spy(model: torch.nn.Module, cfg_: object, mesh: object = None) -> None:
        seen["meta_at_shard"] = all(p.is_meta for p in model.parameters())
        real_shard(model, cfg_, mesh)

    monkeypatch.setattr(_finetune_setup, "_shard", spy)
    from tunesmith.config import instantiate

    state = instantiate(cfg.checkpointer).load_checkpoint()
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model, is_peft = _finetune_setup.build_model(
            cfg, state, torch.device("cpu"), torch.float32, world_size=2
        )
        assert seen["meta_at_shard"] is True and is_peft
        assert not meta_tensors(model)
        params = dict(model.named_parameters())
        assert all(isinstance(p, DTensor) for p in params.values())
        base = state["model"]["layers.0.attn.q_proj.weight"]
        assert torch.equal(params["layers.0.attn.q_proj.weight"].full_tensor(), base)
    finally:
        dist.destroy_process_group()
