"""The finetune recipe on a Llama 3.2 Vision checkpoint in Meta's format (consolidated.00.pth
+ params.json): saves stay Meta, a resumed run continues the same loss curve, and a LoRA run
writes the merged Meta file plus a PEFT adapter with transformers' Mllama names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.models.test_llama3_2_vision_meta import params_json
from tests.recipes._vision_toys import (
    vision_config,
    write_special_tokens,
    write_tiny_mllama,
    write_vqa_data,
)
from tests.recipes.conftest import base_config, read_losses

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def meta_files(tmp_path_factory, assets):
    """The tiny Mllama (cross-attention where llama-models puts it) as a Meta folder."""
    from safetensors.torch import load_file

    from tunesmith.models.convert_weights import hf_to_native, native_to_meta

    root = tmp_path_factory.mktemp("vision_meta")
    model_dir = write_tiny_mllama(root / "mllama", 6, (1, 4))
    config = json.loads((model_dir / "config.json").read_text())
    native = hf_to_native(load_file(model_dir / "model.safetensors"), "LLAMA3_VISION", config)
    meta_dir = root / "original"
    meta_dir.mkdir()
    params = params_json(config)
    torch.save(native_to_meta(native, "LLAMA3_VISION", params), meta_dir / "consolidated.00.pth")
    (meta_dir / "params.json").write_text(json.dumps(params))
    images = root / "images"
    images.mkdir()
    shutil.copy(assets / "torchtune_tests" / "dog_on_skateboard.jpg", images)
    data = write_vqa_data(root / "vqa.json", images / "dog_on_skateboard.jpg", rows=16)
    specials = write_special_tokens(root / "specials.json")
    return model_dir, meta_dir, data, images, assets / "torchtune_tests", specials


def _run(files, out: Path, **over) -> Path:
    from tunesmith.recipes.finetune import recipe_main

    model_dir, meta_dir, data, images, assets, specials = files
    overrides = {
        **vision_config(out, model_dir, data, images, assets, specials),
        "checkpointer._component_": "tunesmith.training.FullModelMetaCheckpointer",
        "checkpointer.checkpoint_dir": str(meta_dir),
        "checkpointer.checkpoint_files": ["consolidated.00.pth"],
        "max_steps_per_epoch": 4,
        "save_every_n_steps": 2,
        **over,
    }
    recipe_main(OmegaConf.create(base_config(out, model_dir, data, **overrides)))
    return out


def test_full_finetune_saves_meta_and_resumes(meta_files, tmp_path):
    original = torch.load(meta_files[1] / "consolidated.00.pth")
    whole = read_losses(_run(meta_files, tmp_path / "whole"))
    assert len(whole) == 4
    saved = torch.load(tmp_path / "whole" / "epoch_1" / "consolidated.00.pth")
    assert sorted(saved) == sorted(original)  # Meta's names, every tensor
    assert any(not torch.equal(saved[k], original[k]) for k in saved)  # it trained
    assert (tmp_path / "whole" / "epoch_1" / "params.json").is_file()
    out = _run(meta_files, tmp_path / "cut")
    shutil.rmtree(out / "epoch_1")  # as if the run had died after step 2's checkpoint
    (out / "logs" / "log.jsonl").unlink()
    assert (out / "step_2" / "consolidated.00.pth").is_file()
    _run(meta_files, out, resume_from_checkpoint=True)
    assert read_losses(out) == pytest.approx(whole[2:], abs=1e-5)
    assert sorted(torch.load(out / "epoch_1" / "consolidated.00.pth")) == sorted(original)


def test_lora_saves_merged_meta_and_peft_adapter(meta_files, tmp_path):
    peft = pytest.importorskip("peft")
    lora = {
        "model.lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
        "model.lora_rank": 4,
        "model.lora_alpha": 8,
        "optimizer.lr": 3e-2,
        "save_every_n_steps": None,
    }
    out = _run(meta_files, tmp_path / "lora", **lora)
    folder = out / "epoch_1"
    assert set(torch.load(folder / "consolidated.00.pth")) == set(
        torch.load(meta_files[1] / "consolidated.00.pth")
    )
    adapter = folder / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4
    base = transformers.MllamaForConditionalGeneration.from_pretrained(meta_files[0]).eval()
    tuned = peft.PeftModel.from_pretrained(base, adapter)
    loaded = [n for n, _ in tuned.named_parameters() if "lora_B" in n]
    from safetensors.torch import load_file

    assert len(loaded) == len([k for k in load_file(adapter / "adapter_model.safetensors")
                               if "lora_B" in k])  # fmt: skip
    assert any("cross_attn" in n for n in loaded) and any("vision_model" in n for n in loaded)
