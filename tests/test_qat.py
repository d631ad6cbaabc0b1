"""QAT: torchao fake quantization vs the converted model, LoRA + QAT, and the qat recipe
(loss falls; its output quantizes to a model that computes what training saw)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("torchao")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent / "recipes"))

from tests.recipes._recipe_toys import write_instruct_data, write_tiny_llama  # noqa: E402
from tunesmith.models.builder import build_decoder, lora_settings  # noqa: E402
from tunesmith.models.spec import ModelSpec  # noqa: E402
from tunesmith.quantization import (  # noqa: E402
    Int4WeightOnlyQATQuantizer,
    Int8DynActInt4WeightQATQuantizer,
    Int8DynActInt4WeightQuantizer,
    QATLoRALinear,
    disable_fake_quant,
    get_quantizer_mode,
)

SPEC = ModelSpec(
    family="LLAMA3", vocab_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
    embed_dim=64, intermediate_dim=128, max_seq_len=64,
)  # fmt: skip
Q = "tunesmith.quantization."


def _model(lora: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    settings = (
        lora_settings(["q_proj", "v_proj"], apply_lora_to_mlp=True, apply_lora_to_output=True)
        if lora
        else None
    )
    model = build_decoder(SPEC, settings)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05 if "lora_b" not in name else 0.02)  # non-zero adapters
    return model.eval()


@pytest.mark.parametrize(
    "quantizer", [Int8DynActInt4WeightQATQuantizer(32), Int4WeightOnlyQATQuantizer(32)], ids=str
)
def test_prepared_forward_equals_converted(quantizer: Any) -> None:
    """torchao's own criterion for its QAT schemes: prepare and convert agree exactly."""
    model = quantizer.prepare(_model())
    assert type(model.layers[0].attn.q_proj).__name__ == "FakeQuantizedLinear"
    tokens = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        fake = model(tokens)
        converted = quantizer.convert(model)(tokens)
    assert type(model.layers[0].attn.q_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"
    torch.testing.assert_close(fake, converted, atol=0, rtol=0)


def test_qat_convert_equals_ptq_of_same_weights() -> None:
    """The converted model is the PTQ scheme: 8da4w QAT convert == 8da4w PTQ quantize."""
    tokens = torch.randint(0, 128, (2, 16))
    qat = Int8DynActInt4WeightQATQuantizer(32).quantize(_model())
    ptq = Int8DynActInt4WeightQuantizer(32).quantize(_model())
    with torch.no_grad():
        torch.testing.assert_close(qat(tokens), ptq(tokens), atol=0, rtol=0)
    assert get_quantizer_mode(Int8DynActInt4WeightQATQuantizer()) == "8da4w-qat"


def test_lora_qat_forward_equals_merged_quantized_model() -> None:
    quantizer = Int8DynActInt4WeightQATQuantizer(32)
    model = quantizer.prepare(_model(lora=True))
    assert isinstance(model.layers[0].attn.q_proj, QATLoRALinear)
    assert type(model.layers[0].attn.k_proj).__name__ == "FakeQuantizedLinear"
    keys = set(_model(lora=True).state_dict())
    assert set(model.state_dict()) == keys  # checkpoints and adapters keep their keys
    tokens = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        fake = model(tokens)
        converted = quantizer.convert(model)(tokens)
    assert not any(isinstance(m, QATLoRALinear) for m in model.modules())
    torch.testing.assert_close(fake, converted, atol=0, rtol=0)
    # reference: merge LoRA in floating point, then post-training quantize
    from tunesmith.modules.peft import get_merged_lora_ckpt

    plain = _model()
    merged = get_merged_lora_ckpt(dict(_model(lora=True).state_dict()), rank=8, alpha=16)
    plain.load_state_dict(merged)
    with torch.no_grad():
        ptq = Int8DynActInt4WeightQuantizer(32).quantize(plain)(tokens)
    torch.testing.assert_close(converted, ptq, atol=1e-5, rtol=1e-5)


def test_lora_qat_gradients_reach_adapters_only() -> None:
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params

    model = Int8DynActInt4WeightQATQuantizer(32).prepare(_model(lora=True))
    set_trainable_params(model, get_adapter_params(model))
    model.train()
    model(torch.randint(0, 128, (2, 16))).square().mean().backward()
    layer = model.layers[0].attn.q_proj
    assert layer.lora_a.weight.grad is not None and layer.lora_a.weight.grad.abs().sum() > 0
    assert layer.lora_b.weight.grad is not None and layer.weight.grad is None
    disable_fake_quant(model)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(torch.arange(16)[None]), _fake_free(torch.arange(16)[None])
        )


def test_qat_lora_without_configs_is_plain_lora() -> None:
    """torchtune's ``from_lora_linear(lora)`` defaults: no config, no fake quantization."""
    from tunesmith.modules.peft import LoRALinear

    torch.manual_seed(0)
    lora = LoRALinear(32, 16, rank=4, alpha=8, use_bias=True)
    torch.nn.init.normal_(lora.lora_b.weight)
    qat = QATLoRALinear.from_lora_linear(lora)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(qat.eval()(x), lora.eval()(x), atol=1e-5, rtol=1e-5)


def _fake_free(tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _model(lora=True)(tokens)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_loss_falls_over_20_qat_steps(lora: bool) -> None:
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params

    model = Int8DynActInt4WeightQATQuantizer(32).prepare(_model(lora=lora)).train()
    if lora:
        set_trainable_params(model, get_adapter_params(model))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2 if lora else 1e-2)
    tokens = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(20):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < (0.9 if lora else 0.7) * losses[0]
    assert all(b < a + 0.05 for a, b in zip(losses, losses[1:]))


def test_fake_quant_after_n_steps() -> None:
    from tunesmith.quantization import qat_model

    model = qat_model(
        "tunesmith.models.builder.build_decoder", Int8DynActInt4WeightQATQuantizer(32),
        fake_quant_after_n_steps=2, gradient_accumulation_steps=2, spec=SPEC,
    )  # fmt: skip
    fq = model.layers[0].attn.q_proj.weight_fake_quantizer
    tokens = torch.randint(0, 128, (1, 8))
    model.eval()
    model(tokens)  # evaluation forwards do not count
    model.train()
    for _ in range(4):  # 2 steps x 2 micro-batches in floating point
        assert not fq.enabled
        model(tokens)
    model(tokens)
    assert fq.enabled


# ----------------------------------------------------------------------------- the recipe
@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qat")
    return write_tiny_llama(root / "model"), write_instruct_data(root / "data.json")


def _config(model_dir: Path, data: Path, out: Path, **over: Any) -> Any:
    cfg: dict[str, Any] = {
        "output_dir": str(out),
        "model": {"_component_": "tunesmith.models.build_from_hf",
                  "checkpoint_dir_or_config": str(model_dir)},
        "tokenizer": {"_component_": "_recipe_toys.ByteChatTokenizer", "max_seq_len": 256},
        "checkpointer": {
            "_component_": "tunesmith.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir), "checkpoint_files": ["model.safetensors"],
            "output_dir": "${output_dir}", "model_type": "LLAMA3",
        },
        "dataset": {"_component_": "tunesmith.datasets.instruct_dataset", "source": "json",
                    "data_files": str(data), "split": "train"},
        "quantizer": {"_component_": Q + "Int8DynActInt4WeightQATQuantizer", "groupsize": 32},
        "seed": 0, "shuffle": True, "batch_size": 4, "epochs": 1, "max_steps_per_epoch": 20,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "loss": {"_component_": "tunesmith.modules.loss.LinearCrossEntropyLoss"},
        "device": "cpu", "dtype": "fp32",
        "metric_logger": {"_component_": "tunesmith.training.metric_logging.DiskLogger",
                          "log_dir": "${output_dir}/logs", "filename": "log.jsonl"},
        "log_every_n_steps": 1,
    }  # fmt: skip
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return OmegaConf.create(cfg)


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "logs" / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_qat_recipe_learns_and_quantizes(
    files: tuple[Path, Path], tmp_path: Path, lora: bool
) -> None:
    from tunesmith.quantization import load_quantized_model
    from tunesmith.recipes.qat import recipe_main
    from tunesmith.recipes.quantize import recipe_main as quantize_main

    model_dir, data = files
    over: dict[str, Any] = {"fake_quant_after_n_steps": 2}
    if lora:
        over.update(
            {
                "model.lora_attn_modules": ["q_proj", "v_proj"],
                "model.lora_rank": 8,
                "model.lora_alpha": 16,
                "model.apply_lora_to_mlp": True,
            }
        )
    out = tmp_path / "run"
    recipe_main(_config(model_dir, data, out, **over))
    losses = _losses(out)
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    summary = json.loads((out / "logs" / "run_summary.json").read_text())  # said before step 1
    assert summary["model"]["builder"] == "tunesmith.models.build_from_hf"
    assert summary["precision"]["fake_quantization"].endswith("Int8DynActInt4WeightQATQuantizer")
    assert summary["model"]["method"].startswith("LoRA" if lora else "full")
    # quantize the trained float weights with the same QAT quantizer (prepare + convert)
    trained = out / "epoch_1"
    qcfg = OmegaConf.create({
        "output_dir": str(tmp_path / "q"),
        "model": {"_component_": "tunesmith.models.build_from_hf",
                  "checkpoint_dir_or_config": str(trained)},
        "checkpointer": {"_component_": "tunesmith.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(trained), "checkpoint_files": ["model.safetensors"],
                         "output_dir": str(tmp_path / "q"), "model_type": "LLAMA3"},
        "quantizer": {"_component_": Q + "Int8DynActInt4WeightQATQuantizer", "groupsize": 32},
        "device": "cpu", "dtype": "fp32",
    })  # fmt: skip
    quantize_main(qcfg)
    quantized = load_quantized_model(tmp_path / "q")
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["mode"] == "8da4w-qat"
    assert type(quantized.layers[0].attn.q_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"


def test_qat_config_errors(files: tuple[Path, Path], tmp_path: Path) -> None:
    from tunesmith.config import ConfigError
    from tunesmith.recipes.qat import qat_config

    cfg = _config(*files, tmp_path)
    del cfg["quantizer"]
    with pytest.raises(ConfigError, match="quantizer"):
        qat_config(cfg)
    cfg = qat_config(_config(*files, tmp_path))
    assert cfg.model.base_component == "tunesmith.models.build_from_hf"
    assert cfg.model.quantizer.groupsize == 32


@pytest.mark.parametrize("name", ["llama3_2/1B_qat_lora", "llama3_2/3B_qat_full"])
def test_bundled_configs_build_qat_models(name: str) -> None:
    """The bundled QAT configs turn into a fake-quantized model (built on the meta device)."""
    from tunesmith.config import instantiate, load_config
    from tunesmith.recipes.qat import qat_config

    cfg = qat_config(load_config(name))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "FakeQuantizedLinear" in kinds
    assert ("QATLoRALinear" in kinds) is name.endswith("lora")


@pytest.mark.slow
def test_qat_lora_with_two_processes(files: tuple[Path, Path], tmp_path: Path) -> None:
    """`tunesmith run --nproc_per_node 2 qat`: FSDP2 over fake-quantized LoRA layers (gloo)."""
    import os
    import subprocess

    model_dir, data = files
    over = {"model.lora_attn_modules": ["q_proj", "v_proj"], "model.lora_rank": 8,
            "model.lora_alpha": 16, "max_steps_per_epoch": 4}  # fmt: skip
    cfg = _config(model_dir, data, tmp_path / "out", **over)
    path = tmp_path / "qat.yaml"
    path.write_text("# recipe: qat\n" + OmegaConf.to_yaml(cfg))
    exe = Path(sys.executable).with_name("tunesmith")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent / "recipes")}
    result = subprocess.run(
        [str(exe), "run", "--nproc_per_node", "2", "qat", "--config", str(path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_losses(tmp_path / "out")) == 4
    assert (tmp_path / "out" / "epoch_1" / "adapter").is_dir()
