"""The finetune recipe trains a tiny random Qwen2.5-VL (written by transformers) on a local
VQA sample with the model transform's own collate (variable patch counts, M-RoPE ids): full,
LoRA and QLoRA learn; the saved checkpoint is HF ``Qwen2_5_VLForConditionalGeneration`` with
equal logits and the LoRA adapter loads with ``peft`` on transformers' model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes._qwen_vl_toys import (
    IMAGE,
    MAX_PIXELS,
    MIN_PIXELS,
    qwen_vl_config,
    write_specials,
    write_tiny_qwen_vl,
)
from tests.recipes._vision_toys import write_vqa_data
from tests.recipes.conftest import base_config, read_losses
from tests.recipes.test_finetune import STEPS, assert_learns

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

LORA_QWEN = {
    "model._component_": "tunesmith.models.build_from_hf",
    "model.lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
    "model.apply_lora_to_mlp": True,
    "model.lora_rank": 8,
    "model.lora_alpha": 16,
    "model.fusion_trainable": "lora",  # merger adapters too: the PEFT adapter holds them
    "optimizer.lr": 3e-2,
}


@pytest.fixture(scope="module")
def qwen_files(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("qwen_vl")
    model_dir = write_tiny_qwen_vl(root / "qwen_vl")
    images = root / "images"
    images.mkdir()
    shutil.copy(assets / "torchtune_tests" / "dog_on_skateboard.jpg", images)
    data = write_vqa_data(root / "vqa.json", images / "dog_on_skateboard.jpg")
    specials = write_specials(root / "specials.json")
    return model_dir, data, images, assets / "torchtune_tests", specials


def run_qwen(qwen_files, tmp_path: Path, name: str, **over) -> Path:
    from tunesmith.recipes.finetune import recipe_main

    model_dir, data, images, assets, specials = qwen_files
    out = tmp_path / name
    overrides = {**qwen_vl_config(model_dir, data, images, assets, specials), **over}
    recipe_main(OmegaConf.create(base_config(out, model_dir, data, **overrides)))
    return out


def qwen_transform(qwen_files):
    from tunesmith.models.qwen2_5_vl import qwen2_5_vl_transform

    _, _, _, assets, specials = qwen_files
    return qwen2_5_vl_transform(
        str(assets / "tiny_bpe_vocab.json"),
        str(assets / "tiny_bpe_merges.txt"),
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        special_tokens_path=str(specials),
    )


def _batch(qwen_files):
    """Two VQA samples through our transform + the transform's collate."""
    from tunesmith.datasets.multimodal import vqa_dataset

    _, data, images, _, _ = qwen_files
    transform = qwen_transform(qwen_files)
    ds = vqa_dataset(transform, source="json", data_files=str(data), image_dir=str(images))
    return transform.collate([ds[0], ds[1]])


def hf_kwargs(batch):
    """A collated Qwen2.5-VL batch as transformers' keyword arguments."""
    tokens = batch["tokens"]
    enc = batch["encoder_input"]
    return dict(
        input_ids=tokens,
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        mm_token_type_ids=(tokens == IMAGE).int(),
    )


def _ours_from(folder: Path):
    """tunesmith's model read from an HF folder by the checkpointer (QWEN2_5_VL)."""
    from tunesmith.models import build_from_hf
    from tunesmith.training import FullModelHFCheckpointer

    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(folder),
        checkpoint_files=["model.safetensors"],
        model_type="QWEN2_5_VL",
        output_dir=str(folder.parent / f"{folder.name}_reread"),
    )
    model = build_from_hf(str(folder)).eval()
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True)
    return model


def _close(got, ref):
    scale = max(1.0, float(ref.abs().max()))
    assert (got - ref).abs().max() <= 1e-4 * scale, float((got - ref).abs().max())


def test_collate_positions_equal_transformers_rope_index(qwen_files):
    """The transform's collate on rows of different lengths and images: M-RoPE ids per row
    equal transformers' get_rope_index with the padded batch's attention mask (padding: 0)."""
    from PIL import Image

    from tunesmith.data import Message

    transform = qwen_transform(qwen_files)
    dog = Image.open(qwen_files[2] / "dog_on_skateboard.jpg").convert("RGB")
    rows = []
    for text, image in (("What is it?", dog), ("Say it", dog.resize((40, 90)))):
        messages = [
            Message(
                "user", [{"type": "image", "content": image}, {"type": "text", "content": text}]
            ),
            Message("assistant", "A dog on a skateboard, I think."),
        ]
        out = transform({"messages": messages})
        rows.append({**out, "labels": out["tokens"]})
    rows.append({"tokens": rows[0]["tokens"][:5], "labels": rows[0]["tokens"][:5]})  # text only
    batch = transform.collate(rows)
    tokens = batch["tokens"]
    lengths = torch.tensor([len(r["tokens"]) for r in rows])
    real = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    assert len(set(lengths.tolist())) == 3
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_files[0])
    ref, _ = hf.model.get_rope_index(
        tokens,
        mm_token_type_ids=(tokens == IMAGE).int(),
        image_grid_thw=batch["encoder_input"]["image_grid_thw"],
        attention_mask=real.long(),
    )
    pos = batch["input_pos"]
    assert pos.shape == (3, 3, tokens.shape[1])
    assert torch.equal(pos[:, real], ref[:, real])
    assert not pos[:, ~real].any()
    assert batch["encoder_input"]["image_grid_thw"].shape == (2, 3)


def test_full_finetune_learns_and_saves_hf_qwen_vl(qwen_files, tmp_path):
    from safetensors.torch import load_file

    out = run_qwen(qwen_files, tmp_path, "full", **{"model.encoder_trainable": True})
    assert_learns(out)
    saved = load_file(out / "epoch_1" / "model.safetensors")
    original = load_file(qwen_files[0] / "model.safetensors")
    assert sorted(saved) == sorted(original)  # HF Qwen2.5-VL names, every tensor
    changed = {k for k in saved if not torch.equal(saved[k], original[k])}
    assert any(k.startswith("visual.blocks") for k in changed)  # the ViT trained
    assert any(k.startswith("model.layers") for k in changed)
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "epoch_1").eval()
    batch = _batch(qwen_files)
    with torch.no_grad():
        ref = hf(**hf_kwargs(batch)).logits
        got = _ours_from(out / "epoch_1")(
            batch["tokens"], encoder_input=batch["encoder_input"], input_pos=batch["input_pos"]
        )
    _close(got, ref)


def test_packed_finetune_learns(qwen_files, tmp_path):
    """dataset.packed=True: packs of image + text documents (block-causal mask, M-RoPE ids
    per document, the transform's collate_packed) in the same loop; 20 steps of 2 packs."""
    _, _, images, *_ = qwen_files
    data = write_vqa_data(tmp_path / "vqa_many.json", images / "dog_on_skateboard.jpg", rows=200)
    over = {"dataset.packed": True, "dataset.data_files": str(data), "optimizer.lr": 3e-3}
    assert_learns(run_qwen(qwen_files, tmp_path, "packed", **over))


@pytest.mark.parametrize(
    "quantize", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["lora", "qlora"]
)
def test_lora_saves_peft_adapter_with_equal_logits(qwen_files, tmp_path, quantize):
    peft = pytest.importorskip("peft")
    out = run_qwen(qwen_files, tmp_path, "lora", **LORA_QWEN, **{"model.quantize_base": quantize})
    losses = assert_learns(out)
    assert len(losses) == STEPS
    kw = hf_kwargs(_batch(qwen_files))
    base = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_files[0]).eval()
    with torch.no_grad():
        before = base(**kw).logits
        tuned = peft.PeftModel.from_pretrained(base, out / "epoch_1" / "adapter").eval()
        with_adapter = tuned(**kw).logits
        assert (with_adapter - before).abs().max() > 1e-3  # the adapter changed the model
        if not quantize:  # merged weights = base + adapter, saved in HF format
            merged = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
                out / "epoch_1"
            )
            _close(merged.eval()(**kw).logits, with_adapter)


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_fsdp_two_processes_match_single(qwen_files, tmp_path, packed):
    """LoRA on the tiny Qwen2.5-VL: 2 ranks x batch 1 == 1 process x batch 2 (losses), with
    samples or with packs of image + text documents."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.recipes.conftest import HERE

    model_dir, data, images, assets, specials = qwen_files
    over = {**LORA_QWEN, "max_steps_per_epoch": 3, "shuffle": False, "dataset.packed": packed}
    runs = {}
    for name, nproc, batch in (("single", 1, 2), ("dist", 2, 1)):
        out = tmp_path / name
        overrides = {
            **qwen_vl_config(model_dir, data, images, assets, specials),
            **over,
            "batch_size": batch,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(base_config(out, model_dir, data, **overrides)))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1] / "src")])
        launch = ["--nproc_per_node", str(nproc)] if nproc > 1 else []
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", *launch, "finetune", "--config", str(path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        runs[name] = read_losses(out)
    assert len(runs["single"]) == 3
    assert runs["dist"] == pytest.approx(runs["single"], abs=1e-4)


def test_lora_with_a_fully_trained_merger_warns_the_adapter_lacks_it(qwen_files, tmp_path, capsys):
    from safetensors.torch import load_file

    over = {**LORA_QWEN, "model.fusion_trainable": True, "max_steps_per_epoch": 2}
    out = run_qwen(qwen_files, tmp_path, "merger", **over)
    assert "the PEFT adapter (epoch_N/adapter) does not" in capsys.readouterr().err
    saved = load_file(out / "epoch_1" / "model.safetensors")
    original = load_file(qwen_files[0] / "model.safetensors")
    assert not torch.equal(
        saved["visual.merger.mlp.0.weight"], original["visual.merger.mlp.0.weight"]
    )
    adapter = load_file(out / "epoch_1" / "adapter" / "adapter_model.safetensors")
    assert not any("merger" in k for k in adapter)
