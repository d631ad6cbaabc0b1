"""Bundled ``qwen2_5_vl/*`` and ``qwen3_vl/*`` configs validate for the finetune recipe, and
``qwen2_5_vl/3B_lora_single_device`` / ``qwen3_vl/2B_lora_single_device`` run (paths
overridden to the tiny Qwen2.5-VL / Qwen3-VL) through ``tunesmith run
lora_finetune_single_device``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.recipes._qwen_vl_toys import MAX_PIXELS, MAX_PIXELS_3, MIN_PIXELS, MIN_PIXELS_3
from tests.recipes.conftest import read_losses
from tests.recipes.test_finetune_qwen3_vl import qwen3_files  # noqa: F401
from tests.recipes.test_finetune_qwen_vl import qwen_files  # noqa: F401
from tunesmith.config import load_config, resolve_config_path, validate_config

NAMES = [
    "qwen2_5_vl/3B_lora_single_device",
    "qwen2_5_vl/7B_lora",
    "qwen2_5_vl/7B_full",
    "qwen3_vl/2B_lora_single_device",
    "qwen3_vl/8B_lora",
    "qwen3_vl/8B_full",
]


@pytest.mark.parametrize("name", NAMES)
def test_bundled_config_validates(name):
    from tunesmith.recipes._checks import config_problems
    from tunesmith.recipes._config_keys import SUPPLIED

    path = resolve_config_path(name)
    assert path.read_text().startswith("# recipe: finetune\n")
    cfg = load_config(path)
    problems = validate_config(cfg, SUPPLIED) + config_problems(cfg, "finetune", [], path)
    assert [str(p) for p in problems if p.severity == "error"] == []
    family = name.split("/")[0]
    assert cfg.checkpointer.model_type == family.upper()
    assert cfg.tokenizer._component_ == f"tunesmith.models.{family}.{family}_transform"
    assert cfg.model._component_.startswith(f"tunesmith.models.{family}.")


@pytest.mark.parametrize(
    "family",
    ["qwen2_5_vl", pytest.param("qwen3_vl", marks=pytest.mark.slow)],  # ~25 s each
)
def test_lora_single_device_runs_on_the_tiny_model(family, request, tmp_path):
    import os
    import subprocess
    import sys

    from tests.recipes.conftest import HERE

    qwen3 = family == "qwen3_vl"
    files = request.getfixturevalue("qwen3_files" if qwen3 else "qwen_files")
    tiny, _, images, assets, specials = files
    model_dir = tmp_path / "model"
    shutil.copytree(tiny, model_dir)
    if qwen3:  # the 2B config names one model.safetensors
        name, files_override = "qwen3_vl/2B_lora_single_device", []
        pixels = (MIN_PIXELS_3, MAX_PIXELS_3)
    else:  # the config's sharded file names, one shard
        (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00001.safetensors")
        name = "qwen2_5_vl/3B_lora_single_device"
        files_override = ["checkpointer.checkpoint_files.max_filename=00001"]
        pixels = (MIN_PIXELS, MAX_PIXELS)
    image = str(images / "dog_on_skateboard.jpg")
    rows = [{"images": [image], "texts": [{"user": "What is shown?", "assistant": "A dog."}]}] * 8
    data = tmp_path / "cauldron.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [
            sys.executable, "-m", "tunesmith.cli", "run", "lora_finetune_single_device",
            "--config", name,
            f"output_dir={out}",
            "model._component_=tunesmith.models.build_from_hf",
            f"model.checkpoint_dir_or_config={model_dir}",
            f"tokenizer.path={assets / 'tiny_bpe_vocab.json'}",
            f"tokenizer.merges_file={assets / 'tiny_bpe_merges.txt'}",
            f"+tokenizer.special_tokens_path={specials}",
            f"+tokenizer.min_pixels={pixels[0]}",
            f"tokenizer.max_pixels={pixels[1]}",
            "tokenizer.max_seq_len=128",
            f"checkpointer.checkpoint_dir={model_dir}",
            *files_override,
            "dataset.source=json",
            f"dataset.data_files={data}",
            "device=cpu", "max_steps_per_epoch=2", "gradient_accumulation_steps=1",
            "metric_logger.filename=log.jsonl",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    losses = read_losses(out)
    assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()
    assert (out / "epoch_1" / "model.safetensors").is_file()
    assert (out / "epoch_1" / "adapter" / "adapter_model.safetensors").is_file()
