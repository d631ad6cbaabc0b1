"""The finetune recipe trains a tiny random Llama 3.2 Vision (transformers' Mllama) on a
local VQA sample: full, LoRA and QLoRA learn; the saved checkpoint is HF Mllama and the
LoRA adapter loads with ``peft`` on transformers' model with the same logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes._vision_toys import (
    vision_config,
    write_special_tokens,
    write_tiny_mllama,
    write_vqa_data,
)
from tests.recipes.conftest import base_config, read_losses
from tests.recipes.test_finetune import STEPS, assert_learns

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

LORA_VISION = {
    "model.lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
    "model.apply_lora_to_mlp": True,
    "model.lora_rank": 8,
    "model.lora_alpha": 16,
    "optimizer.lr": 3e-2,
}


@pytest.fixture(scope="module")
def vision_files(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("vision")
    model_dir = write_tiny_mllama(root / "mllama")
    images = root / "images"
    images.mkdir()
    shutil.copy(assets / "torchtune_tests" / "dog_on_skateboard.jpg", images)
    data = write_vqa_data(root / "vqa.json", images / "dog_on_skateboard.jpg")
    specials = write_special_tokens(root / "specials.json")
    return model_dir, data, images, assets / "torchtune_tests", specials


def _run(vision_files, tmp_path: Path, name: str, **over) -> Path:
    from tunesmith.recipes.finetune import recipe_main

    model_dir, data, images, assets, specials = vision_files
    out = tmp_path / name
    overrides = {**vision_config(out, model_dir, data, images, assets, specials), **over}
    recipe_main(OmegaConf.create(base_config(out, model_dir, data, **overrides)))
    return out


def _hf_inputs(vision_files):
    """One VQA sample through our transform + collate, as transformers' Mllama inputs."""
    from tunesmith.data._vision_collate import padded_collate_tiled_images_and_mask
    from tunesmith.datasets.multimodal import vqa_dataset
    from tunesmith.models.llama3_2_vision import Llama3VisionTransform

    model_dir, data, images, assets, specials = vision_files
    transform = Llama3VisionTransform(
        str(assets / "tiktoken_small.model"),
        special_tokens_path=str(specials),
        tile_size=28,
        patch_size=14,
        max_num_tiles=4,
    )
    ds = vqa_dataset(transform, source="json", data_files=str(data), image_dir=str(images))
    return hf_inputs(padded_collate_tiled_images_and_mask([ds[0]], padding_idx=transform.pad_id))


def hf_inputs(batch):
    """A collated vision batch as transformers' Mllama keyword arguments."""
    from tunesmith.models.vision_spec import LLAMA3_2_VISION_ASPECT_RATIOS

    enc = batch["encoder_input"]
    ratios = [tuple(r) for r in LLAMA3_2_VISION_ASPECT_RATIOS]  # transformers' ids start at 1
    ids = torch.tensor(
        [[ratios.index(tuple(r.tolist())) + 1 for r in row] for row in enc["aspect_ratio"]]
    )
    b, s = batch["tokens"].shape
    n_img, n_tiles = enc["images"].shape[1:3]
    cross = batch["encoder_mask"].reshape(b, s, n_img, n_tiles, -1)[..., 0].long()
    return dict(
        input_ids=batch["tokens"],
        pixel_values=enc["images"],
        aspect_ratio_ids=ids,
        aspect_ratio_mask=enc["aspect_ratio_mask"].long(),
        cross_attention_mask=cross,
    )


def test_full_finetune_learns_and_saves_hf_mllama(vision_files, tmp_path):
    from safetensors.torch import load_file

    out = _run(vision_files, tmp_path, "full")
    assert_learns(out)
    saved = load_file(out / "epoch_1" / "model.safetensors")
    original = load_file(vision_files[0] / "model.safetensors")
    assert sorted(saved) == sorted(original)  # HF Mllama names, every tensor
    changed = [k for k in saved if not torch.equal(saved[k], original[k])]
    assert any("vision_model" in k for k in changed)  # the encoder trained (builder default)
    transformers.MllamaForConditionalGeneration.from_pretrained(out / "epoch_1")


def test_packed_finetune_learns(vision_files, tmp_path):
    """dataset.packed=True: packs of image + text documents (per-document self- and
    cross-attention masks) through the same training loop; 20 steps of 2 packs."""
    model_dir, _, images, *_ = vision_files
    data = write_vqa_data(tmp_path / "vqa_many.json", images / "dog_on_skateboard.jpg", rows=200)
    out = _run(
        vision_files,
        tmp_path,
        "packed",
        **{"dataset.packed": True, "dataset.data_files": str(data), "optimizer.lr": 3e-3},
    )
    assert_learns(out)


@pytest.mark.parametrize(
    "quantize", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["lora", "qlora"]
)
def test_lora_saves_peft_adapter_with_equal_logits(vision_files, tmp_path, quantize):
    peft = pytest.importorskip("peft")
    out = _run(vision_files, tmp_path, "lora", **LORA_VISION, **{"model.quantize_base": quantize})
    losses = assert_learns(out)
    assert len(losses) == STEPS
    inputs = _hf_inputs(vision_files)
    base = transformers.MllamaForConditionalGeneration.from_pretrained(vision_files[0]).eval()
    with torch.no_grad():
        before = base(**inputs).logits
        tuned = peft.PeftModel.from_pretrained(base, out / "epoch_1" / "adapter").eval()
        with_adapter = tuned(**inputs).logits
        assert (with_adapter - before).abs().max() > 1e-3  # the adapter changed the model
        if not quantize:  # merged weights = base + adapter, saved in HF format
            merged = transformers.MllamaForConditionalGeneration.from_pretrained(out / "epoch_1")
            got = merged.eval()(**inputs).logits
            scale = with_adapter.abs().max()
            assert (got - with_adapter).abs().max() <= 1e-4 * max(1.0, float(scale))


def test_torchtune_11b_lora_config_runs_unchanged(vision_files, tmp_path):
    """torchtune v0.6.1's llama3_2_vision/11B_lora_single_device.yaml as shipped, through
    ``tunesmith run lora_finetune_single_device``; overridden: paths, the device, the step
    budget, and the model (the tiny Mllama via build_from_hf, 28 px tiles)."""
    import json
    import os
    import subprocess
    import sys

    from tests.recipes.conftest import HERE

    mirror = Path(
        os.environ.get("TUNESMITH_TORCHTUNE_MIRROR", "/work/.mirror/pytorch+torchtune/repo")
    )
    if not mirror.exists():
        pytest.skip(f"needs the torchtune mirror at {mirror} (TUNESMITH_TORCHTUNE_MIRROR)")
    name = "recipes/configs/llama3_2_vision/11B_lora_single_device.yaml"
    config = tmp_path / "11B_lora_single_device.yaml"
    config.write_text(
        subprocess.run(
            ["git", "-C", str(mirror), "show", f"v0.6.1:{name}"],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    tiny, _, images, assets, specials = vision_files
    model_dir = tmp_path / "model"  # the config's sharded file names, one shard
    shutil.copytree(tiny, model_dir)
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00001.safetensors")
    image = str(images / "dog_on_skateboard.jpg")
    rows = [{"images": [image], "texts": [{"user": "What is shown?", "assistant": "A dog."}]}] * 8
    data = tmp_path / "cauldron.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "out"
    repo = HERE.parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(repo / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable, "-m", "tunesmith.cli", "run", "lora_finetune_single_device",
            "--config", str(config),
            f"output_dir={out}",
            "model._component_=tunesmith.models.build_from_hf",
            f"model.checkpoint_dir_or_config={model_dir}",
            "model.image_size=28",
            f"tokenizer.path={assets / 'tiktoken_small.model'}",
            f"tokenizer.special_tokens_path={specials}",
            "tokenizer.image_size=28",
            "tokenizer.max_seq_len=128",
            f"checkpointer.checkpoint_dir={model_dir}",
            "checkpointer.checkpoint_files.max_filename=00001",
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


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_fsdp_two_processes_match_single(vision_files, tmp_path, packed):
    """LoRA on the tiny Mllama: 2 ranks x batch 1 == 1 process x batch 2 (losses), with
    samples or with packs of image + text documents."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.recipes.conftest import HERE

    model_dir, data, images, assets, specials = vision_files
    over = {**LORA_VISION, "max_steps_per_epoch": 3, "shuffle": False, "dataset.packed": packed}
    runs = {}
    for name, nproc, batch in (("single", 1, 2), ("dist", 2, 1)):
        out = tmp_path / name
        cfg = base_config(
            out,
            model_dir,
            data,
            **{
                **vision_config(out, model_dir, data, images, assets, specials),
                **over,
                "batch_size": batch,
            },
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
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


def test_training_batches_pad_tiles_to_the_transforms_max(vision_files, tmp_path):
    """A 1-tile image is padded to ``max_num_tiles`` in training batches, as transformers'
    processor and tunesmith's generate/eval pad it (padding tiles change the ViT's output)."""
    from PIL import Image

    from tunesmith.config import instantiate
    from tunesmith.recipes._finetune_setup import build_dataloader

    model_dir, _, _, assets, specials = vision_files
    small = tmp_path / "images"
    small.mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(small / "red.png")
    data = write_vqa_data(tmp_path / "vqa_small.json", small / "red.png", rows=4)
    cfg = OmegaConf.create(vision_config(tmp_path, model_dir, data, small, assets, specials))
    transform = instantiate(cfg.tokenizer)
    dataset = instantiate(cfg.dataset, transform)
    loader, _ = build_dataloader(
        [dataset], transform, batch_size=2, world_size=1, rank=0, seed=0, ignore_index=-100
    )
    batch = next(iter(loader))
    images = batch["encoder_input"]["images"]  # [b, n_images, n_tiles, c, h, w]
    assert images.shape[2] == cfg.tokenizer.max_num_tiles
    assert batch["encoder_input"]["aspect_ratio"].tolist() == [[[1, 1]], [[1, 1]]]
    assert images[:, :, 1:].abs().sum() == 0  # the padding tiles are zeros


def test_torchtune_multi_dataset_config_runs_unchanged(vision_files, tmp_path):
    """torchtune main's dev/11B_lora_multi_dataset.yaml (its 12th Llama 3.2 Vision config: a
    weighted ``datasets:`` mix read by ``dev/lora_finetune_distributed_multi_dataset``) as
    shipped, through ``tunesmith run``; overridden: paths, the device, the step budget, the
    tiny model, and each mix entry's source (local Cauldron-format JSON)."""
    import json
    import os
    import subprocess
    import sys

    from tests.recipes.conftest import HERE

    mirror = Path(
        os.environ.get("TUNESMITH_TORCHTUNE_MIRROR", "/work/.mirror/pytorch+torchtune/repo")
    )
    if not mirror.exists():
        pytest.skip(f"needs the torchtune mirror at {mirror} (TUNESMITH_TORCHTUNE_MIRROR)")
    config = tmp_path / "11B_lora_multi_dataset.yaml"
    config.write_text(
        subprocess.run(
            ["git", "-C", str(mirror), "show", "HEAD:recipes/configs/dev/11B_lora_multi_dataset.yaml"],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    tiny, _, images, assets, specials = vision_files
    model_dir = tmp_path / "model"
    shutil.copytree(tiny, model_dir)
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00001.safetensors")
    image = str(images / "dog_on_skateboard.jpg")
    files = []
    for k, answer in enumerate(["A dog.", "A skateboard.", "Outside.", "Yes."]):
        rows = [{"images": [image], "texts": [{"user": f"Q{k}?", "assistant": answer}]}] * (3 + k)
        files.append(tmp_path / f"part{k}.json")
        files[-1].write_text(json.dumps(rows))
    out = tmp_path / "out"
    repo = HERE.parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(repo / "src"), env.get("PYTHONPATH", "")])
    sources = [
        arg
        for k, path in enumerate(files)
        for arg in (f"datasets.{k}.source=json", f"datasets.{k}.data_files={path}")
    ]
    proc = subprocess.run(
        [
            sys.executable, "-m", "tunesmith.cli", "run",
            "dev/lora_finetune_distributed_multi_dataset", "--config", str(config),
            f"output_dir={out}",
            "model._component_=tunesmith.models.build_from_hf",
            f"model.checkpoint_dir_or_config={model_dir}",
            "model.image_size=28",
            f"tokenizer.path={assets / 'tiktoken_small.model'}",
            f"tokenizer.special_tokens_path={specials}",
            "tokenizer.image_size=28",
            "tokenizer.max_seq_len=128",
            f"checkpointer.checkpoint_dir={model_dir}",
            "checkpointer.checkpoint_files.max_filename=00001",
            *sources,
            "device=cpu", "compile=False", "max_steps_per_epoch=2", "batch_size=2",
            "dataloader.num_workers=0",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    logs = list((out / "logs").glob("*"))
    assert logs, "DiskLogger wrote nothing"
    text = "".join(p.read_text() for p in logs if p.suffix in (".txt", ".jsonl", ".log"))
    assert text.count("loss") >= 2, text  # two steps logged
    saved = sorted(out.glob("epoch_*"))
    assert saved and (saved[-1] / "adapter" / "adapter_model.safetensors").is_file()
