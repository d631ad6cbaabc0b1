"""eval recipe, lm-eval's multimodal path: a local image+question task (tests/lm_eval_tasks/
tiny_vqa, generate_until with doc_to_image) runs end to end on a tiny random Llama 3.2 Vision
(transformers' Mllama) and every answer equals transformers' greedy ``generate`` on the same
prompts and images; torchtune's 11B_evaluation.yaml (mmmu_val_science) validates unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

from tests.recipes._vision_toys import TILE, write_special_tokens, write_tiny_mllama  # noqa: E402

TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"
MIRROR = Path(os.environ.get("TUNESMITH_TORCHTUNE_MIRROR", "/work/.mirror/pytorch+torchtune/repo"))


@pytest.fixture(scope="module")
def files(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("eval_vision")
    model_dir = write_tiny_mllama(root / "mllama")
    specials = write_special_tokens(root / "specials.json")
    return model_dir, assets / "torchtune_tests" / "tiktoken_small.model", specials


def _config(files, out: Path, **over: Any):
    model_dir, ranks, specials = files
    return OmegaConf.create({
        "model": {"_component_": "tunesmith.models.build_from_hf",
                  "checkpoint_dir_or_config": str(model_dir)},
        "checkpointer": {"_component_": "tunesmith.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(model_dir),
                         "checkpoint_files": ["model.safetensors"],
                         "output_dir": str(out / "unused"), "model_type": "LLAMA3_VISION"},
        "tokenizer": {"_component_": "tunesmith.models.llama3_2_vision.Llama3VisionTransform",
                      "path": str(ranks), "special_tokens_path": str(specials),
                      "tile_size": TILE, "patch_size": 14, "max_num_tiles": 4,
                      "max_seq_len": 256},
        "device": "cpu", "dtype": "fp32", "seed": 1234, "output_dir": str(out),
        "tasks": ["tiny_vqa"], "include_path": str(TASKS), "batch_size": 2,
        "max_seq_length": 256, "log_samples": True,
        **over,
    })  # fmt: skip


def _reference_answers(files) -> list[str]:
    """transformers' Mllama: Llama 3.2 Vision's chat format written out by hand (one user
    turn, image tokens where the <image> placeholders are, the assistant header open),
    MllamaImageProcessor's pixels and transformers' cross-attention mask, greedy generate."""
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    from tests.recipes._vision_toys import IMAGE_TOKEN, SPECIALS
    from tunesmith.models.llama3 import llama3_tokenizer

    model_dir, ranks, specials = files
    tok = llama3_tokenizer(str(ranks), special_tokens_path=str(specials))
    model = transformers.MllamaForConditionalGeneration.from_pretrained(model_dir).eval()
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    from tunesmith.data._image_transforms import CLIP_MEAN, CLIP_STD

    processor = MllamaImageProcessorPil(  # Llama 3.2 Vision's preprocessor_config.json values
        size={"height": TILE, "width": TILE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        max_image_tiles=4,
    )
    task = json.loads((TASKS / "tiny_vqa" / "tiny_vqa.json").read_text())
    stops = [SPECIALS[t] for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")]

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_bos=False, add_eos=False)

    answers = []
    for row in task:
        from PIL import Image

        images = [Image.open(TASKS / "tiny_vqa" / "images" / n).convert("RGB") for n in row["images"]]  # fmt: skip
        # the published template: the content as written, images as <|image|> where the
        # placeholders are (all first when there are none), the whole content trimmed
        text = (
            row["question"]
            if "<image>" in row["question"]
            else "<image>" * len(images) + row["question"]
        )
        content: list[int] = []
        for i, piece in enumerate(text.strip().split("<image>")):
            if i:
                content.append(IMAGE_TOKEN)
            content += enc(piece) if piece else []
        ids = (
            [SPECIALS["<|begin_of_text|>"], SPECIALS["<|start_header_id|>"]] + enc("user")
            + [SPECIALS["<|end_header_id|>"]] + enc("\n\n") + content
            + [SPECIALS["<|eot_id|>"], SPECIALS["<|start_header_id|>"]] + enc("assistant")
            + [SPECIALS["<|end_header_id|>"]] + enc("\n\n")
        )  # fmt: skip
        pixels = processor(images=[images], return_tensors="pt")
        sparse = get_cross_attention_token_mask(ids, IMAGE_TOKEN)
        cross = convert_sparse_cross_attention_mask_to_dense(
            [sparse], pixels["num_tiles"], max_num_tiles=4, length=len(ids)
        )
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pixel_values=pixels["pixel_values"],
                aspect_ratio_ids=pixels["aspect_ratio_ids"],
                aspect_ratio_mask=pixels["aspect_ratio_mask"],
                cross_attention_mask=torch.as_tensor(cross),
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=SPECIALS["<|finetune_right_pad_id|>"],
            )
        new = []
        for t in out[0, len(ids) :].tolist():
            if t in stops:
                break
            new.append(t)
        answers.append(tok.decode(new, skip_special_tokens=False).split("\n\n")[0])
    return answers


def test_local_multimodal_task_equals_transformers_generate(files, tmp_path):
    from tunesmith.recipes.eval import recipe_main

    recipe_main(_config(files, tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    samples = sorted(saved["samples"]["tiny_vqa"], key=lambda r: r["doc_id"])
    ours = [row["resps"][0][0] for row in samples]
    expected = _reference_answers(files)
    assert ours == expected
    assert any(text for text in ours)  # the tiny model says something
    task = json.loads((TASKS / "tiny_vqa" / "tiny_vqa.json").read_text())
    want = sum(a.strip() == row["answer"] for a, row in zip(expected, task)) / len(task)
    assert saved["results"]["tiny_vqa"]["exact_match,none"] == pytest.approx(want)


def test_vision_eval_config_errors(files, tmp_path):
    from tunesmith.config import ConfigError
    from tunesmith.recipes.eval import recipe_main

    with pytest.raises(ConfigError, match="apply_chat_template"):
        recipe_main(_config(files, tmp_path / "a", apply_chat_template=True))


def test_placeholder_count_must_match_images():
    from tunesmith.evaluation._vlm import image_text_messages

    with pytest.raises(ValueError, match="2 <image> placeholders but the request has 1"):
        image_text_messages("<image> vs <image>", ["img"])
    user, assistant = image_text_messages("Describe it.", ["a", "b"])
    assert [p["type"] for p in user.content] == ["image", "image", "text"]
    assert assistant.role == "assistant"


@pytest.fixture(scope="module")
def lm_eval_tasks() -> list[str]:
    from lm_eval.tasks import TaskManager

    return list(TaskManager().all_tasks)


@pytest.mark.parametrize("source", ["bundled", "torchtune"])
def test_11b_evaluation_config_validates_unchanged(source, tmp_path, lm_eval_tasks):
    from tunesmith.config import load_config, validate_config

    if source == "bundled":
        path = (
            Path(__file__).resolve().parents[1]
            / "src/tunesmith/configs/llama3_2_vision/11B_evaluation.yaml"
        )
    else:
        if not MIRROR.exists():
            pytest.skip(f"needs the torchtune mirror at {MIRROR} (TUNESMITH_TORCHTUNE_MIRROR)")
        path = tmp_path / "11B_evaluation.yaml"
        path.write_text(
            subprocess.run(
                ["git", "-C", str(MIRROR), "show",
                 "v0.6.1:recipes/configs/llama3_2_vision/11B_evaluation.yaml"],
                check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
    cfg = load_config(path)
    assert list(cfg.tasks) == ["mmmu_val_science"]
    errors = [p for p in validate_config(cfg) if p.severity == "error"]
    assert errors == []
    assert "mmmu_val_science" in lm_eval_tasks  # the task lm-eval will run


def test_torchtune_11b_evaluation_runs_on_the_tiny_model(files, tmp_path):
    """torchtune's 11B_evaluation.yaml, through `tunesmith run eleuther_eval`, with paths,
    device, the model (tiny, build_from_hf) and the task (local, mmmu needs the hub)
    overridden."""
    import sys

    if not MIRROR.exists():
        pytest.skip(f"needs the torchtune mirror at {MIRROR} (TUNESMITH_TORCHTUNE_MIRROR)")
    config = tmp_path / "11B_evaluation.yaml"
    config.write_text(
        subprocess.run(
            ["git", "-C", str(MIRROR), "show",
             "v0.6.1:recipes/configs/llama3_2_vision/11B_evaluation.yaml"],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    model_dir, ranks, specials = files
    ckpt = tmp_path / "model"
    shutil.copytree(model_dir, ckpt)
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable, "-m", "tunesmith.cli", "run", "eleuther_eval",
            "--config", str(config),
            f"output_dir={tmp_path / 'out'}",
            "model._component_=tunesmith.models.build_from_hf",
            f"+model.checkpoint_dir_or_config={ckpt}",
            f"tokenizer.path={ranks}",
            f"+tokenizer.special_tokens_path={specials}",
            f"+tokenizer.image_size={TILE}",
            f"checkpointer.checkpoint_dir={ckpt}",
            "checkpointer.checkpoint_files.max_filename=00001",
            "device=cpu", "dtype=fp32", "tasks=[tiny_vqa]", f"+include_path={TASKS}",
            "max_seq_length=256",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "exact_match,none" in results["results"]["tiny_vqa"]


def test_prompt_of_a_three_tile_image_equals_transformers(files, tmp_path):
    """generate's vision_prompt_batch pads images to the max tiles as transformers' processor
    does (the ViT lets patches attend to padding tiles): last-token logits equal."""
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    from tests.recipes._vision_toys import IMAGE_TOKEN
    from tunesmith.config import instantiate
    from tunesmith.data._image_transforms import CLIP_MEAN, CLIP_STD
    from tunesmith.data._prompt import vision_prompt_batch
    from tunesmith.recipes.generate import load_model

    cfg = _config(files, tmp_path)
    model, _ = load_model(cfg, torch.device("cpu"), torch.float32)
    image = TASKS / "tiny_vqa" / "images" / "blue_wide.png"  # 1 x 3 tiles of 4
    batch = vision_prompt_batch(
        instantiate(cfg.tokenizer), {"user": {"image": str(image), "text": "Hi?"}}
    )
    with torch.no_grad():
        ours = model(batch["tokens"], encoder_input=batch["encoder_input"],
                     encoder_mask=batch["encoder_mask"])[0, -1]  # fmt: skip
    from PIL import Image

    px = MllamaImageProcessorPil(size={"height": TILE, "width": TILE}, image_mean=list(CLIP_MEAN),
                                 image_std=list(CLIP_STD), max_image_tiles=4)(
        images=[[Image.open(image).convert("RGB")]], return_tensors="pt")  # fmt: skip
    ids = batch["tokens"][0].tolist()
    cross = convert_sparse_cross_attention_mask_to_dense(
        [get_cross_attention_token_mask(ids, IMAGE_TOKEN)], px["num_tiles"], 4, len(ids)
    )
    hf = transformers.MllamaForConditionalGeneration.from_pretrained(files[0]).eval()
    with torch.no_grad():
        ref = hf(input_ids=batch["tokens"], pixel_values=px["pixel_values"],
                 aspect_ratio_ids=px["aspect_ratio_ids"], aspect_ratio_mask=px["aspect_ratio_mask"],
                 cross_attention_mask=torch.as_tensor(cross)).logits[0, -1]  # fmt: skip
    assert (ours - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_image_loglikelihood_is_refused_clearly():
    from types import SimpleNamespace

    from lm_eval.api.instance import Instance

    from tunesmith.evaluation import TunesmithVLM

    lm = TunesmithVLM(torch.nn.Linear(1, 1), SimpleNamespace(tokenizer=SimpleNamespace()))
    req = Instance("loglikelihood", doc={}, arguments=("<image>Q", " A", {"visual": ["im"]}), idx=0)
    with pytest.raises(NotImplementedError, match="generate_until task"):
        lm.loglikelihood([req])
