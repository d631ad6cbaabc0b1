"""The finetune recipe trains a tiny random Qwen3-VL (written by transformers'
``Qwen3VLForConditionalGeneration``: DeepStack, interleaved M-RoPE, QK-norm) on a local VQA
sample: full and LoRA learn; the saved checkpoint is an HF Qwen3-VL folder that transformers
loads with logits equal to tunesmith's, and the LoRA adapter loads with ``peft`` on
transformers' model with logits equal to the merged checkpoint's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes._qwen_vl_toys import (
    IMAGE,
    MAX_PIXELS_3,
    MIN_PIXELS_3,
    qwen_vl_config,
    write_specials,
    write_tiny_qwen3_vl,
)
from tests.recipes._vision_toys import write_vqa_data
from tests.recipes.conftest import base_config
from tests.recipes.test_finetune import STEPS, assert_learns
from tests.recipes.test_finetune_qwen_vl import LORA_QWEN, _close

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")
if not hasattr(transformers, "Qwen3VLForConditionalGeneration"):
    pytest.skip("this transformers has no Qwen3-VL", allow_module_level=True)


@pytest.fixture(scope="module")
def qwen3_files(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("qwen3_vl")
    model_dir = write_tiny_qwen3_vl(root / "qwen3_vl")
    images = root / "images"
    images.mkdir()
    shutil.copy(assets / "torchtune_tests" / "dog_on_skateboard.jpg", images)
    data = write_vqa_data(root / "vqa.json", images / "dog_on_skateboard.jpg")
    specials = write_specials(root / "specials.json")
    return model_dir, data, images, assets / "torchtune_tests", specials


def run_qwen3(files, tmp_path: Path, name: str, **over) -> Path:
    from tunesmith.recipes.finetune import recipe_main

    model_dir, data, images, assets, specials = files
    out = tmp_path / name
    cfg = qwen_vl_config(model_dir, data, images, assets, specials, family="qwen3_vl")
    recipe_main(OmegaConf.create(base_config(out, model_dir, data, **{**cfg, **over})))
    return out


def _batch(files):
    """Two VQA samples through qwen3_vl_transform + the transform's collate."""
    from tunesmith.datasets.multimodal import vqa_dataset
    from tunesmith.models.qwen3_vl import qwen3_vl_transform

    _, data, images, assets, specials = files
    transform = qwen3_vl_transform(
        str(assets / "tiny_bpe_vocab.json"),
        str(assets / "tiny_bpe_merges.txt"),
        min_pixels=MIN_PIXELS_3,
        max_pixels=MAX_PIXELS_3,
        special_tokens_path=str(specials),
    )
    ds = vqa_dataset(transform, source="json", data_files=str(data), image_dir=str(images))
    batch = transform.collate([ds[0], ds[1]])
    grid = batch["encoder_input"]["image_grid_thw"]
    assert (batch["tokens"] == IMAGE).sum() == grid.prod(-1).sum() // 4 > 0  # 2 x 2 merge
    return batch


def _hf_kwargs(batch):
    tokens = batch["tokens"]
    enc = batch["encoder_input"]
    return dict(
        input_ids=tokens,
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        mm_token_type_ids=(tokens == IMAGE).int(),
    )


def _ours_from(folder: Path):
    from tunesmith.models import build_from_hf
    from tunesmith.training import FullModelHFCheckpointer

    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(folder),
        checkpoint_files=["model.safetensors"],
        model_type="QWEN3_VL",
        output_dir=str(folder.parent / f"{folder.name}_reread"),
    )
    model = build_from_hf(str(folder)).eval()
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True)
    return model


def test_full_finetune_learns_and_saves_hf_qwen3_vl(qwen3_files, tmp_path):
    from safetensors.torch import load_file

    out = run_qwen3(qwen3_files, tmp_path, "full", **{"model.encoder_trainable": True})
    assert_learns(out)
    saved = load_file(out / "epoch_1" / "model.safetensors")
    original = load_file(qwen3_files[0] / "model.safetensors")
    assert sorted(saved) == sorted(original)  # HF Qwen3-VL names, every tensor
    changed = {k for k in saved if not torch.equal(saved[k], original[k])}
    assert any(".visual.blocks." in k for k in changed)  # the ViT trained
    assert any(".deepstack_merger_list." in k for k in changed)  # and the DeepStack mergers
    assert any(".language_model.layers." in k for k in changed)
    hf = transformers.Qwen3VLForConditionalGeneration.from_pretrained(out / "epoch_1").eval()
    batch = _batch(qwen3_files)
    with torch.no_grad():
        ref = hf(**_hf_kwargs(batch)).logits
        got = _ours_from(out / "epoch_1")(
            batch["tokens"], encoder_input=batch["encoder_input"], input_pos=batch["input_pos"]
        )
    _close(got, ref)


@pytest.mark.slow  # ~35 s on 2 CPU cores
def test_lora_saves_peft_adapter_with_equal_logits(qwen3_files, tmp_path):
    peft = pytest.importorskip("peft")
    out = run_qwen3(qwen3_files, tmp_path, "lora", **LORA_QWEN)
    assert len(assert_learns(out)) == STEPS
    kw = _hf_kwargs(_batch(qwen3_files))
    base = transformers.Qwen3VLForConditionalGeneration.from_pretrained(qwen3_files[0]).eval()
    with torch.no_grad():
        before = base(**kw).logits
        tuned = peft.PeftModel.from_pretrained(base, out / "epoch_1" / "adapter").eval()
        with_adapter = tuned(**kw).logits
        assert (with_adapter - before).abs().max() > 1e-3  # the adapter changed the model
        merged = transformers.Qwen3VLForConditionalGeneration.from_pretrained(out / "epoch_1")
        _close(merged.eval()(**kw).logits, with_adapter)
