"""The bundled ``ministral3/3B_lora_single_device`` runs as shipped through ``tunesmith run
lora_finetune_single_device`` on a tiny random ``Mistral3ForConditionalGeneration`` (Pixtral
tower + Ministral 3 text decoder: yarn and the Llama-4-style query scaling), overridden on
the command line only where a tiny run must be: paths, the device, the step budget, the model
node -> ``build_from_hf`` of the tiny checkpoint (the config's LoRA arguments kept), a byte
tokenizer, and the one-shard file list. The saved checkpoint keeps the vision tower."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.models._tiny_hf import tiny_configs
from tests.recipes._recipe_toys import VOCAB, write_instruct_data
from tests.recipes.conftest import HERE, read_losses

transformers = pytest.importorskip("transformers")


def _write_tiny_mistral3(directory: Path) -> Path:
    """A random tiny multimodal Ministral 3 saved as ``model-00001-of-00001.safetensors``."""
    text = tiny_configs()["ministral3"]
    text.vocab_size = VOCAB  # the byte tokenizer's ids
    vision = transformers.PixtralVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8, head_dim=16,
    )  # fmt: skip
    cfg = transformers.Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=5, tie_word_embeddings=False
    )
    torch.manual_seed(0)
    transformers.Mistral3ForConditionalGeneration(cfg).save_pretrained(directory)
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    return directory


def test_ministral3_3b_lora_single_device_runs_on_the_tiny_model(tmp_path: Path) -> None:
    from safetensors import safe_open

    model_dir = _write_tiny_mistral3(tmp_path / "model")
    data = write_instruct_data(tmp_path / "data.json", n=16)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [
            sys.executable, "-m", "tunesmith.cli", "run", "lora_finetune_single_device",
            "--config", "ministral3/3B_lora_single_device",
            f"output_dir={out}",
            "model._component_=tunesmith.models.build_from_hf",
            f"+model.checkpoint_dir_or_config={model_dir}",
            "tokenizer._component_=_recipe_toys.ByteChatTokenizer", "~tokenizer.path",
            "tokenizer.max_seq_len=64",
            f"checkpointer.checkpoint_dir={model_dir}",
            "checkpointer.checkpoint_files=[model-00001-of-00001.safetensors]",
            "dataset.source=json", f"+dataset.data_files={data}",
            "device=cpu", "dtype=fp32", "max_steps_per_epoch=2", "batch_size=2",
            "gradient_accumulation_steps=1", "metric_logger.filename=log.jsonl",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    losses = read_losses(out)
    assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()
    assert (out / "epoch_1" / "adapter" / "adapter_model.safetensors").is_file()
    saved = sorted((out / "epoch_1").glob("model*.safetensors"))
    assert saved
    keys = set()
    for path in saved:
        with safe_open(str(path), "pt") as f:
            keys |= set(f.keys())
    assert any("vision_tower" in k for k in keys), sorted(keys)[:5]  # carried through
    assert json.loads((out / "epoch_1" / "config.json").read_text())["model_type"] == "mistral3"
