"""``tunesmith estimate``: the meta-device simulation of a training step predicts the peak
that MemTracker measures on a real CPU step of the recipe's model (weights loaded with the
recipe's ``build_model``), within 15%, for full / LoRA / QLoRA, activation checkpointing on
and off, fused and chunked cross-entropy, on two model shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

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

    torch.manual_seed(0)
    state = instantiate(cfg.checkpointer, resume_from_checkpoint=False).load_checkpoint()
    model, _ = build_model(cfg, state, torch.device("cpu"), torch.float32, 1)
    del state
    loss_fn = instantiate(cfg.loss)
    if hasattr(loss_fn, "set_model_output"):
        loss_fn.set_model_output(model)
    else:
        model.set_num_output_chunks(loss_fn.num_output_chunks)
    return _tracked_peak(cfg, model, loss_fn, vocab=256)


def _tracked_peak(cfg, model: torch.nn.Module, loss_fn, vocab: int) -> int:
    """MemTracker's peak over two real CPU steps of ``model`` with ``cfg``'s optimizer on
    random ``[BATCH, SEQ]`` tokens."""
    from tunesmith.config import instantiate
    from tunesmith.training.memory_estimate import memory_tracker

    optimizer = instantiate(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    tracker = memory_tracker(model, optimizer)
    with tracker:
        for _ in range(2):
            tokens, labels = (torch.randint(0, vocab, (BATCH, SEQ)) for _ in range(2))
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


def _component_config(model: dict, **over) -> DictConfig:
    cfg = {
        "model": model,
        "loss": {"_component_": "tunesmith.modules.loss.LinearCrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "batch_size": 2,
        "dtype": "fp32",
        **over,
    }
    return OmegaConf.create(cfg)


_DEEP = {"_component_": "tunesmith.models.llama3.llama3", "vocab_size": 512, "num_layers": 8,
         "num_heads": 4, "num_kv_heads": 2, "embed_dim": 128, "max_seq_len": 256}  # fmt: skip
_DEEP_LORA = {**_DEEP, "_component_": "tunesmith.models.llama3.lora_llama3",
              "lora_attn_modules": ["q_proj", "v_proj"], "lora_rank": 4, "lora_alpha": 8}  # fmt: skip


@pytest.mark.parametrize(
    "model,over",
    [(_DEEP, {}), (_DEEP, {"enable_activation_checkpointing": True}), (_DEEP_LORA, {}),
     (_DEEP_LORA, {"enable_activation_checkpointing": True})],
    ids=["full", "full_ac", "lora", "lora_ac"],
)  # fmt: skip
def test_deep_stacks_extrapolate_to_the_whole_simulation(model, over, monkeypatch) -> None:
    """A stack of identical layers is simulated at 2 and 3 layers and extrapolated (seconds
    for 80 layers): every category equals simulating all 8 layers."""
    _check_extrapolation(_component_config(model, **over), monkeypatch)


def test_alternating_stacks_extrapolate_by_blocks(tmp_path: Path, monkeypatch) -> None:
    """Gemma 2 alternates sliding-window and global layers: blocks of 2, simulated at 2 and
    4 of its 8 layers; every category equals simulating all 8."""
    import transformers

    transformers.Gemma2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
        max_position_embeddings=256,
    ).save_pretrained(tmp_path)  # fmt: skip
    node = {"_component_": "tunesmith.models.build_from_hf",
            "checkpoint_dir_or_config": str(tmp_path)}  # fmt: skip
    notes = _check_extrapolation(_component_config(node), monkeypatch)
    assert any("simulated 2 and 4 of the 8 layers" in n for n in notes), notes


def _check_extrapolation(cfg: DictConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    from tunesmith.training import memory_estimate

    short = memory_estimate.estimate_memory(cfg, seq_len=128)
    assert any("extrapolated" in n for n in short.notes)
    with monkeypatch.context() as patch:
        patch.setattr(memory_estimate, "_layer_period", lambda model: None)
        whole = memory_estimate.estimate_memory(cfg, seq_len=128)
    assert not any("extrapolated" in n for n in whole.notes)
    for part in ("parameters", "gradients", "optimizer", "activations", "other"):
        assert getattr(short, part) == getattr(whole, part), part
    return short.notes


def test_layer_period_follows_the_layer_pattern() -> None:
    """Alternating sliding-window / global layers repeat every 2; the period is the shortest
    block the stack repeats (the last one may be cut short); not a plain decoder: None."""
    from tunesmith.config import instantiate
    from tunesmith.training.memory_estimate import _layer_period

    with torch.device("meta"):
        model = instantiate(OmegaConf.create(_DEEP))
    assert _layer_period(model) == 1
    for layer in model.layers[1::2]:
        layer.attn.sliding_window = 64
    assert _layer_period(model) == 2
    # a stack need not end on a whole block (Gemma 3 27B: 62 layers in blocks of 6); here
    # layer 7 turned global leaves G S G S G S G | G: blocks of 7, too long to extrapolate
    model.layers[7].attn.sliding_window = None
    assert _layer_period(model) == 7
    assert _layer_period(torch.nn.Linear(2, 2)) is None


def _tiny_hf(kind: str, folder: Path) -> Path:
    import transformers

    if kind == "qwen3_moe":
        transformers.Qwen3MoeConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            num_experts=8, num_experts_per_tok=2, max_position_embeddings=256,
        ).save_pretrained(folder)  # fmt: skip
    elif kind == "gemma2":  # sliding-window layers: SDPA with a mask
        transformers.Gemma2Config(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
            max_position_embeddings=256,
        ).save_pretrained(folder)  # fmt: skip
    else:  # q / k / v biases: LoRA on a biased projection
        transformers.Qwen2Config(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("kind", ["qwen3_moe", "qwen2", "gemma2"])
def test_moe_and_biased_estimates_within_tolerance_of_measured_peak(
    kind: str, lora: bool, tmp_path: Path
) -> None:
    """Mixture-of-experts layers on meta route every expert an equal share (no router scores
    exist there) and LoRA on biased projections runs under the tracker; a real CPU step (the
    random router routing as it will) peaks within 15% of the estimate."""
    from tunesmith.config import instantiate
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params
    from tunesmith.training.memory_estimate import estimate_memory

    folder = _tiny_hf(kind, tmp_path)
    model_node = {"_component_": "tunesmith.models.build_from_hf",
                  "checkpoint_dir_or_config": str(folder)}  # fmt: skip
    if lora:
        model_node.update(lora_attn_modules=["q_proj", "v_proj"], lora_rank=4, lora_alpha=8)
    cfg = _component_config(model_node)
    est = estimate_memory(cfg, batch_size=BATCH, seq_len=SEQ)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    if lora:
        set_trainable_params(model, get_adapter_params(model))
    loss_fn = instantiate(cfg.loss)
    loss_fn.set_model_output(model)
    measured = _tracked_peak(cfg, model, loss_fn, vocab=512)
    assert est.peak == pytest.approx(measured, rel=TOLERANCE), (est.table(), measured)


@pytest.mark.parametrize(
    "config,expected",
    [("llama3_1/8B_lora_dpo_single_device", "is not a token cross-entropy loss"),
     ("llama3_2_vision/11B_lora_single_device", "not a text decoder")],
)  # fmt: skip
def test_configs_it_cannot_simulate_are_one_line(config: str, expected: str, capsys) -> None:
    """Preference / RL losses and vision-language models: one line, exit 2, no traceback."""
    from tunesmith.cli.main import main

    assert main(["estimate", "--config", config]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_distillation_counts_the_teacher() -> None:
    from tunesmith.config import load_config, resolve_config_path
    from tunesmith.training.memory_estimate import estimate_memory

    cfg = load_config(resolve_config_path("qwen2/1.5_to_0.5B_KD_lora_single_device"))
    est = estimate_memory(cfg, batch_size=1, seq_len=32)
    student_and_teacher = (0.49e9 + 1.54e9) * 2  # bf16 Qwen2 0.5B and 1.5B
    assert est.parameters == pytest.approx(student_and_teacher, rel=0.05)
    assert any("teacher" in n for n in est.notes)
