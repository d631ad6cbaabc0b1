"""The knowledge_distillation recipe on tiny random Llamas: a LoRA student run through the CLI
under torchtune's recipe name lowers the KD loss and saves a PEFT adapter; kd_ratio=0 is the
finetune recipe; wrong configs fail naming the key."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.recipes._recipe_toys import write_tiny_llama
from tests.recipes.conftest import HERE, LORA, base_config, read_losses
from tunesmith.config import ConfigError

REPO = HERE.parents[1]
STEPS = 15


def write_teacher(folder: Path, vocab_size: int = 320) -> Path:
    """A random 3-layer Llama, wider than the student, with the toy tokenizer's vocabulary."""
    import transformers

    torch.manual_seed(7)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="session")
def trained_teacher(
    tiny_teacher: Path, instruct_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny teacher after 20 steps of full finetuning on the toy data (as torchtune's KD
    configs advise: distil from a teacher finetuned on the target dataset)."""
    from tunesmith.recipes import finetune

    out = tmp_path_factory.mktemp("trained_teacher")
    cfg = base_config(out, tiny_teacher, instruct_data, **{"optimizer.lr": 3e-3})
    finetune.recipe_main(OmegaConf.create(cfg))
    return out / "epoch_1"


def kd_config(out: Path, student: Path, teacher: Path, data: Path, **over: Any) -> dict[str, Any]:
    """torchtune's KD keys (torchtune.* component names), pointing at tiny local files."""
    cfg = base_config(out, student, data, max_steps_per_epoch=STEPS)
    cfg["teacher_model"] = {
        "_component_": "tunesmith.models.build_from_hf",
        "checkpoint_dir_or_config": str(teacher),
    }
    cfg["teacher_checkpointer"] = {**cfg["checkpointer"], "checkpoint_dir": str(teacher)}
    cfg["checkpointer"]["_component_"] = "torchtune.training.FullModelHFCheckpointer"
    cfg["loss"] = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    cfg["kd_loss"] = {"_component_": "torchtune.modules.loss.ForwardKLWithChunkedOutputLoss"}
    cfg["kd_ratio"] = 0.5
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def read_metrics(out: Path) -> dict[str, list[float]]:
    """``{metric: values by step}`` from the DiskLogger's JSONL."""
    found: dict[str, list[float]] = {}
    for line in (out / "logs" / "log.jsonl").read_text().splitlines():
        for k, v in json.loads(line).items():
            if k not in ("step", "time"):
                found.setdefault(k, []).append(v)
    return found


@pytest.mark.slow
def test_cli_lora_kd_learns_and_saves_peft_adapter(
    tiny_llama: Path, trained_teacher: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """``tunesmith run knowledge_distillation_single_device --config <tiny yaml>``: the KD loss
    falls over 15 steps, the logged loss mixes class and KD loss by kd_ratio, and the LoRA
    adapter loads in PEFT and equals the merged weights."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    out = tmp_path / "out"
    cfg = kd_config(out, tiny_llama, trained_teacher, instruct_data, **{"optimizer.lr": 1e-2},
                    gradient_accumulation_steps=2, clip_grad_norm=1.0,
                    lr_scheduler={"_component_": "torchtune.training.lr_schedulers."
                                  "get_cosine_schedule_with_warmup", "num_warmup_steps": 2},
                    **{f"model.{k}": v for k, v in LORA.items()})  # fmt: skip
    path = tmp_path / "tiny_kd_lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "knowledge_distillation_single_device",
         "--config", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    m = read_metrics(out)
    for key in ("loss", "class_loss", "kd_loss", "lr", "tokens_per_second", "grad_norm"):
        assert len(m[key]) == STEPS and all(math.isfinite(x) for x in m[key]), key
    kd = m["kd_loss"]
    assert sum(kd[-3:]) / 3 < 0.6 * sum(kd[:3]) / 3, kd  # ~7.0 -> ~2.9
    for loss, ce, k in zip(m["loss"], m["class_loss"], kd):
        assert loss == pytest.approx(0.5 * ce + 0.5 * k, rel=1e-5)
    assert m["lr"][0] < m["lr"][2]  # warmup

    tokens = torch.tensor([[257, *b"user: Reverse and shout: apple", 10]])
    merged = transformers.LlamaForCausalLM.from_pretrained(out / "epoch_1").eval()
    base = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        before = base(tokens).logits
        adapted = peft.PeftModel.from_pretrained(base, out / "epoch_1" / "adapter").eval()
        ref = adapted(tokens).logits
        assert (merged(tokens).logits - ref).abs().max() <= 1e-4
        assert (before - ref).abs().max() > 1e-3  # the adapter changed the model


@pytest.mark.slow
def test_kd_ratio_zero_equals_finetune(
    tiny_llama: Path, tiny_teacher: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """With kd_ratio=0 the loss (and so every update) is the finetune recipe's, step by step."""
    from tunesmith.recipes import finetune, knowledge_distillation

    over = {"max_steps_per_epoch": 2, "gradient_accumulation_steps": 2}
    ft = base_config(tmp_path / "ft", tiny_llama, instruct_data, **over)
    ft["loss"] = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    finetune.recipe_main(OmegaConf.create(ft))
    kd = kd_config(tmp_path / "kd", tiny_llama, tiny_teacher, instruct_data, kd_ratio=0.0, **over)
    knowledge_distillation.recipe_main(OmegaConf.create(kd))
    m = read_metrics(tmp_path / "kd")
    expected = read_losses(tmp_path / "ft")
    assert len(expected) == 2
    assert m["loss"] == pytest.approx(expected, rel=1e-4)
    assert m["class_loss"] == pytest.approx(expected, rel=1e-4)
    assert all(k > 0 for k in m["kd_loss"])  # still measured, weighted 0


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_resume_continues_the_same_curve(
    tiny_llama: Path, tiny_teacher: Path, instruct_data: Path, tmp_path: Path, lora: bool
) -> None:
    """Full and LoRA students: cut after step 3's intermediate checkpoint and resumed == one
    uninterrupted run (loss, class_loss and kd_loss every step); the full student learns."""
    import shutil

    from tunesmith.recipes.knowledge_distillation import recipe_main

    over: dict[str, Any] = {"max_steps_per_epoch": 6, "save_every_n_steps": 3,
                            "optimizer.lr": 1e-2 if lora else 2e-3}  # fmt: skip
    if lora:
        over.update({f"model.{k}": v for k, v in LORA.items()})

    def run(name: str, **more: Any) -> Path:
        out = tmp_path / name
        cfg = kd_config(out, tiny_llama, tiny_teacher, instruct_data, **over, **more)
        recipe_main(OmegaConf.create(cfg))
        return out

    whole = read_metrics(run("whole"))
    if not lora:
        assert (tmp_path / "whole" / "epoch_1" / "model.safetensors").is_file()
        assert whole["loss"][-1] < whole["loss"][0], whole["loss"]
    out = run("cut")
    shutil.rmtree(out / "epoch_1")
    (out / "logs" / "log.jsonl").unlink()
    run("cut", resume_from_checkpoint=True)
    again = read_metrics(out)
    for key in ("loss", "class_loss", "kd_loss"):
        assert again[key] == pytest.approx(whole[key][3:], abs=1e-5), key


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lora", "tp"),
    [(False, 1), (True, 1), (True, 2)],
    ids=["fsdp2-full", "fsdp2-lora", "tp2-lora"],
)
def test_torchrun_two_processes_match_single(
    tiny_llama: Path, tiny_teacher: Path, instruct_data: Path, tmp_path: Path, lora: bool, tp: int
) -> None:
    """2 ranks x batch 2 (student and teacher sharded with FSDP2) == 1 process x batch 4: the
    same loss, class_loss and kd_loss every step. ``tensor_parallel_dim=2``: both ranks read
    the batch of 4; student and teacher are split by heads / columns / vocabulary."""
    over: dict[str, Any] = {"max_steps_per_epoch": 3, "shuffle": False,
                            "gradient_accumulation_steps": 2}  # fmt: skip
    if lora:
        over.update({f"model.{k}": v for k, v in LORA.items()})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    for name, nproc, batch in (("single", 1, 4), ("dist", 2, 4 if tp > 1 else 2)):
        if name == "dist" and tp > 1:
            over["tensor_parallel_dim"] = tp
        cfg = kd_config(tmp_path / name, tiny_llama, tiny_teacher, instruct_data,
                        batch_size=batch, **over)  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        launch = ["--nproc_per_node", str(nproc)] if nproc > 1 else []
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", *launch, "knowledge_distillation",
             "--config", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    single, dist = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dist")
    for key in ("loss", "class_loss", "kd_loss"):
        assert len(dist[key]) == 3
        assert dist[key] == pytest.approx(single[key], rel=1e-4, abs=1e-4), key
    assert (tmp_path / "dist" / "epoch_1").is_dir()


def test_vocab_mismatch_names_teacher_model_and_model(
    tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    from tunesmith.recipes.knowledge_distillation import recipe_main

    teacher = write_tiny_llama(tmp_path / "teacher384", vocab_size=384)
    cfg = kd_config(tmp_path / "out", tiny_llama, teacher, instruct_data)
    with pytest.raises(ConfigError, match="teacher_model has a vocabulary of 384") as err:
        recipe_main(OmegaConf.create(cfg))
    assert "model has 320" in str(err.value) and err.value.key == "teacher_model"


def test_wrong_kd_loss_or_missing_teacher_names_the_key(
    tiny_llama: Path, tiny_teacher: Path, instruct_data: Path, tmp_path: Path
) -> None:
    from tunesmith.recipes.knowledge_distillation import recipe_main

    ce = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    cfg = kd_config(tmp_path / "a", tiny_llama, tiny_teacher, instruct_data, kd_loss=ce)
    with pytest.raises(ConfigError, match="not a distillation loss") as err:
        recipe_main(OmegaConf.create(cfg))
    assert err.value.key == "kd_loss._component_"
    linear = {"_component_": "tunesmith.modules.loss.LinearCrossEntropyLoss"}
    cfg = kd_config(tmp_path / "c", tiny_llama, tiny_teacher, instruct_data, loss=linear)
    with pytest.raises(ConfigError, match="CEWithChunkedOutputLoss") as err:
        recipe_main(OmegaConf.create(cfg))
    assert err.value.key == "loss._component_"
    cfg = kd_config(tmp_path / "d", tiny_llama, tiny_teacher, instruct_data, kd_ratio=1.5)
    with pytest.raises(ConfigError, match=r"kd_ratio: must be a number >= 0 and <= 1, got 1.5"):
        recipe_main(OmegaConf.create(cfg))
    cfg = kd_config(tmp_path / "b", tiny_llama, tiny_teacher, instruct_data)
    del cfg["teacher_checkpointer"]
    with pytest.raises(ConfigError, match="teacher_checkpointer is missing"):
        recipe_main(OmegaConf.create(cfg))


PEER_CONFIGS = (
    Path.home() / ".cache/tunesmith-bench/peer-venv/lib/python3.11/site-packages/recipes/configs"
)
KD_CONFIG_NAMES = (
    "qwen2/1.5_to_0.5B_KD_lora_single_device",
    "qwen2/1.5_to_0.5B_KD_lora_distributed",
    "llama3_2/8B_to_1B_KD_lora_single_device",
    "llama3_2/8B_to_1B_KD_lora_distributed",
)


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", KD_CONFIG_NAMES)
def test_bundled_kd_configs_match_torchtune(name: str) -> None:
    """Same keys and values as torchtune 0.6.1's file; components resolve to the same objects."""
    from tunesmith.config import load_config, resolve_component

    if not (PEER_CONFIGS / f"{name}.yaml").is_file():
        pytest.skip("torchtune 0.6.1 peer venv not installed")
    theirs = _flat(OmegaConf.to_container(OmegaConf.load(PEER_CONFIGS / f"{name}.yaml")))
    ours = _flat(OmegaConf.to_container(load_config(name)))
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key.endswith("_component_"):
            assert resolve_component(ours[key]) is resolve_component(value), key
        elif key == "output_dir":
            assert ours[key] == value.replace("/tmp/torchtune/", "/tmp/tunesmith/")
        elif isinstance(value, str) and value.startswith("/tmp/"):
            assert ours[key].rstrip("/") == value.rstrip("/"), key
        else:
            assert ours[key] == value, key


@pytest.mark.parametrize("source", ["bundled", pytest.param("torchtune", marks=pytest.mark.slow)])
def test_torchtune_kd_config_runs_unchanged(assets: Path, tmp_path: Path, source: str) -> None:
    """llama3_2/8B_to_1B_KD_lora_single_device (the bundled twin, and torchtune 0.6.1's own file)
    on the Alpaca sample; overridden: paths, device, step budget, batch size, and the model sizes
    (2- and 3-layer Llamas with Llama 3's vocabulary instead of the 1B / 8B downloads)."""
    config = "llama3_2/8B_to_1B_KD_lora_single_device"
    if source == "torchtune":
        if not (PEER_CONFIGS / f"{config}.yaml").is_file():
            pytest.skip("torchtune 0.6.1 peer venv not installed")
        config = str(PEER_CONFIGS / f"{config}.yaml")
    student = write_tiny_llama(tmp_path / "student", vocab_size=128256, tied=True)
    teacher = write_tiny_llama(tmp_path / "teacher", seed=1, vocab_size=128256, tied=True)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "knowledge_distillation_single_device",
         "--config", config, f"output_dir={out}",
         "model._component_=tunesmith.models.build_from_hf",
         f"+model.checkpoint_dir_or_config={student}",
         "teacher_model._component_=tunesmith.models.build_from_hf",
         f"+teacher_model.checkpoint_dir_or_config={teacher}",
         f"tokenizer.path={assets / 'torchtune_tests' / 'tiktoken_small.model'}",
         "tokenizer.max_seq_len=128", f"checkpointer.checkpoint_dir={student}",
         "checkpointer.checkpoint_files=[model.safetensors]",
         f"teacher_checkpointer.checkpoint_dir={teacher}",
         "teacher_checkpointer.checkpoint_files=[model.safetensors]", "+dataset.source=json",
         f"+dataset.data_files={assets / 'torchtune_tests' / 'alpaca_tiny.json'}",
         "device=cpu", "max_steps_per_epoch=2", "batch_size=2", "gradient_accumulation_steps=1",
         "+metric_logger.filename=log.jsonl"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    m = read_metrics(out)
    assert len(m["kd_loss"]) == 2 and all(math.isfinite(x) and x > 0 for x in m["kd_loss"])
    assert (out / "epoch_1" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_fp16_kd_learns_with_loss_scaling(
    tiny_llama: Path, trained_teacher: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """dtype=fp16: fp32 student weights, fp16 autocast (teacher too), loss scaling (18.7)."""
    from tunesmith.recipes import knowledge_distillation

    cfg = kd_config(tmp_path / "kd", tiny_llama, trained_teacher, instruct_data, dtype="fp16",
                    clip_grad_norm=1.0, **{"optimizer.lr": 3e-3})  # fmt: skip
    knowledge_distillation.recipe_main(OmegaConf.create(cfg))
    losses = read_metrics(tmp_path / "kd")["loss"]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
