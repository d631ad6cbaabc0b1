"""``tunesmith estimate``: the meta-device simulation of a training step predicts the peak
that MemTracker measures on a real CPU step of the recipe's model (weights loaded with the
recipe's ``build_model``), within 15%, for full / LoRA / QLoRA, activation checkpointing on
and off, fused and chunked cross-entropy, on two model shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.recipes.conftest import LORA, base_config

TOLERANCE = 0.15
BATCH, SEQ = 4, 64

_LORA = {f"model.{k}": v for k, v in LORA.items()}
MODES = {
    "full": {},
    "full_ac": {"enable_activation_checkpointing": True},
    "full_chunked_ce": {"loss._component_": "tunesmith.modules.loss.CEWithChunkedOutputLoss"},
    "lora": _LORA,
    "lora_ac": {**_LORA, "enable_activation_checkpointing": True},
    "qlora": {**_LORA, "model.quantize_base": True},
}


@pytest.fixture(scope="module", params=[64, 256], ids=["dim64", "dim256"])
def llama(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.recipes._recipe_toys import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("llama"), hidden_size=request.param)


def _measured_peak(cfg) -> int:
    """MemTracker's peak over two real CPU steps: the recipe's model, loss and optimizer."""
    from tunesmith.config import instantiate
    from tunesmith.recipes._finetune_setup import build_model
    from tunesmith.training.memory_estimate import memory_tracker

    torch.manual_seed(0)
    state = instantiate(cfg.checkpointer, resume_from_checkpoint=False).load_checkpoint()
    model, _ = build_model(cfg, state, torch.device("cpu"), torch.float32, 1)
    del state
    loss_fn = instantiate(cfg.loss)
    if hasattr(loss_fn, "set_model_output"):
        loss_fn.set_model_output(model)
    else:
        model.set_num_output_chunks(loss_fn.num_output_chunks)
    optimizer = instantiate(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    tracker = memory_tracker(model, optimizer)
    with tracker:
        for _ in range(2):
            tokens, labels = (torch.randint(0, 256, (BATCH, SEQ)) for _ in range(2))
            loss_fn(model(tokens), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.reset_mod_stats()
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


@pytest.mark.parametrize("mode", list(MODES))
def test_estimate_within_tolerance_of_measured_peak(mode: str, llama: Path, tmp_path: Path):
    from tunesmith.training.memory_estimate import estimate_memory

    cfg = OmegaConf.create(base_config(tmp_path / "o", llama, tmp_path / "d", **MODES[mode]))
    est = estimate_memory(cfg, batch_size=BATCH, seq_len=SEQ)
    measured = _measured_peak(cfg)
    assert est.peak == pytest.approx(measured, rel=TOLERANCE), (est.table(), measured)
    if "lora" in mode:
        assert est.gradients < est.parameters / 4  # only the adapters train


def test_estimate_reflects_checkpointing_sharding_and_optimizers(tiny_llama: Path, tmp_path):
    from tunesmith.training.memory_estimate import estimate_memory

    def est(**over):
        cfg = OmegaConf.create(base_config(tmp_path / "o", tiny_llama, tmp_path / "d", **over))
        return estimate_memory(cfg, batch_size=BATCH, seq_len=SEQ, world_size=over.pop("_w", 1))

    plain, ac = est(), est(enable_activation_checkpointing=True)
    assert ac.activations < plain.activations
    assert est(enable_activation_offloading=True).activations < plain.activations / 2 + 1
    paged = est(**{"optimizer._component_": "bitsandbytes.optim.PagedAdamW8bit"})
    assert paged.optimizer == 0 and "paged" in " ".join(paged.notes)
    eight = est(**{"optimizer._component_": "torchao.optim.AdamW8bit"})
    assert eight.optimizer == pytest.approx(plain.optimizer / 4, rel=0.05)
    cfg = OmegaConf.create(base_config(tmp_path / "o", tiny_llama, tmp_path / "d"))
    sharded = estimate_memory(cfg, batch_size=BATCH, seq_len=SEQ, world_size=4)
    assert sharded.optimizer == plain.optimizer // 4 and sharded.parameters == plain.parameters // 4
    assert sharded.activations == plain.activations


def test_cli_prints_peak_and_largest_batch(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    from tunesmith.cli.main import main
    from tunesmith.training.memory_estimate import estimate_memory, largest_batch_size

    cfg = base_config(tmp_path / "o", tiny_llama, tmp_path / "d")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    budget_gib = 0.02
    code = main(["estimate", "--config", str(path), "--memory", str(budget_gib),
                 "--seq_len", "64", "--nproc_per_node", "2", "batch_size=2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "peak" in out and "2 device(s)" in out and "batch 2 x 64" in out
    budget = int(budget_gib * 1024**3)
    node = OmegaConf.create(cfg)
    fits = largest_batch_size(node, budget, world_size=2, seq_len=64)
    assert f"largest batch_size that fits {budget_gib:g} GiB per device: {fits}" in out
    assert fits >= 1
    assert estimate_memory(node, world_size=2, batch_size=fits, seq_len=64).peak <= budget
    assert estimate_memory(node, world_size=2, batch_size=fits + 1, seq_len=64).peak > budget
