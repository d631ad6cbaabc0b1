"""The dpo recipe on image + text preference pairs (``multimodal_preference_dataset``): tiny
random Llama 3.2 Vision (``MllamaForConditionalGeneration``), Qwen2.5-VL and (full DPO)
Qwen3-VL written by transformers. LoRA DPO: the step-0 log-probs equal transformers' for the same images and
text, the reward margin rises and the PEFT adapter loads; full DPO against a different
reference: the step-0 loss equals TRL's ``DPOTrainer`` loss computed from transformers'
log-probs of the policy and the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from tests.modules.test_preference_loss import _trl_pair_loss
from tests.recipes._qwen_vl_toys import IMAGE as QWEN_IMAGE
from tests.recipes._qwen_vl_toys import qwen_vl_config
from tests.recipes._vision_toys import vision_config
from tests.recipes.conftest import base_config
from tests.recipes.test_dpo import read_metrics
from tests.recipes.test_finetune_qwen3_vl import qwen3_files  # noqa: F401
from tests.recipes.test_finetune_qwen_vl import LORA_QWEN, qwen_files  # noqa: F401
from tests.recipes.test_finetune_qwen_vl import hf_kwargs as qwen_hf_kwargs
from tests.recipes.test_finetune_vision import LORA_VISION, hf_inputs, vision_files  # noqa: F401

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

STEPS, BETA = 8, 0.1
ANSWERS = [  # (question, chosen, rejected)
    ("What is presented on image?", "A dog on a skateboard.", "A cat asleep on a sofa."),
    ("Which animal is it?", "It is a dog.", "It is a horse, surely."),
]


def write_pairs(path: Path, image: str, rows: int = 32) -> Path:
    data = []
    for i in range(rows):
        q, good, bad = ANSWERS[i % len(ANSWERS)]
        user = {"role": "user", "content": q}
        data.append({
            "image": image,
            "chosen": [user, {"role": "assistant", "content": good}],
            "rejected": [user, {"role": "assistant", "content": bad}],
        })  # fmt: skip
    path.write_text(json.dumps(data))
    return path


FAMILIES = {
    # name: (files fixture, transformers class, LoRA keys)
    "llama3_2_vision": ("vision_files", "MllamaForConditionalGeneration", LORA_VISION),
    "qwen2_5_vl": ("qwen_files", "Qwen2_5_VLForConditionalGeneration", LORA_QWEN),
    "qwen3_vl": ("qwen3_files", "Qwen3VLForConditionalGeneration", LORA_QWEN),
}


def _config(family: str, files, out: Path, pairs: Path, **over: Any) -> dict[str, Any]:
    model_dir, _, images, assets, specials = files
    if family.startswith("qwen"):
        family_over = qwen_vl_config(model_dir, pairs, images, assets, specials, family)
    else:
        family_over = vision_config(out, model_dir, pairs, images, assets, specials)
    cfg = base_config(out, model_dir, pairs, **{**family_over, "shuffle": False, **over})
    cfg["dataset"] = {
        "_component_": "tunesmith.datasets.multimodal.multimodal_preference_dataset",
        "source": "json",
        "data_files": str(pairs),
        "image_dir": str(images),
        "split": "train",
    }
    cfg["loss"] = {"_component_": "torchtune.rlhf.loss.DPOLoss", "beta": BETA}
    cfg["max_steps_per_epoch"] = over.get("max_steps_per_epoch", STEPS)
    return cfg


def _first_batch(cfg: dict[str, Any]) -> dict[str, Any]:
    """The recipe's first pair batch (shuffle=False: pairs 0 and 1), collated on the host."""
    from tunesmith.config import instantiate
    from tunesmith.recipes._preference_data import (
        build_preference_dataloader,
        build_preference_datasets,
    )

    node = OmegaConf.create(cfg)
    transform = instantiate(node.tokenizer)
    datasets = build_preference_datasets(node.dataset, transform)
    loader, _ = build_preference_dataloader(
        datasets, transform, batch_size=2, world_size=1, rank=0, seed=0, shuffle=False
    )
    return next(iter(loader))


def _hf_logps(model, family: str, batch: dict[str, Any]) -> torch.Tensor:
    """``[2b]`` summed log-probs of each row's trained tokens under a transformers model."""
    if family.startswith("qwen"):
        kwargs = qwen_hf_kwargs(batch)
        assert (batch["tokens"] == QWEN_IMAGE).any()
    else:
        kwargs = hf_inputs(batch)
    with torch.no_grad():
        logits = model(**kwargs).logits.double()
    labels = batch["labels"][:, 1:]
    logp = logits[:, :-1].log_softmax(-1)
    keep = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * keep).sum(-1)


def _hf_model(family: str, folder: Path):
    return getattr(transformers, FAMILIES[family][1]).from_pretrained(folder).eval()


@pytest.mark.slow  # ~30-55 s on 2 CPU cores
@pytest.mark.parametrize("family", ["llama3_2_vision", "qwen2_5_vl"])
def test_lora_dpo_on_image_pairs_learns_with_transformers_logps(family, request, tmp_path):
    from tunesmith.recipes.dpo import recipe_main

    peft = pytest.importorskip("peft")
    fixture, _, lora = FAMILIES[family]
    files = request.getfixturevalue(fixture)
    pairs = write_pairs(tmp_path / "pairs.json", "dog_on_skateboard.jpg")
    out = tmp_path / "lora"
    over = {**lora, "model._component_": "tunesmith.models.build_from_hf"}
    over["optimizer.lr"] = 1e-2
    cfg = _config(family, files, out, pairs, **over)
    recipe_main(OmegaConf.create(cfg))
    m = read_metrics(out)
    assert len(m["loss"]) == STEPS and all(math.isfinite(x) for x in m["loss"])
    # step 0: policy == reference (adapters start at zero), log-probs as transformers has them
    assert m["loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    batch = _first_batch(cfg)
    assert batch["tokens"].shape[0] == 4  # 2 chosen rows, then 2 rejected rows
    base = _hf_model(family, files[0])
    ref = _hf_logps(base, family, batch)
    chosen, rejected = ref.chunk(2)
    assert m["log_probs/chosen"][0] == pytest.approx(float(chosen.mean()), rel=1e-4)
    assert m["log_probs/rejected"][0] == pytest.approx(float(rejected.mean()), rel=1e-4)
    # the margin rises and the chosen answers win
    margins = m["rewards/margins"]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)
    assert sum(margins[-3:]) / 3 > 0.5 and margins[-1] > margins[1], margins
    assert sum(m["rewards/accuracies"][-3:]) / 3 >= 0.9
    # the PEFT adapter loads on transformers' model and prefers the chosen answers there too
    tuned = peft.PeftModel.from_pretrained(base, out / "epoch_1" / "adapter").eval()
    policy = _hf_logps(tuned, family, batch)
    tuned_margin = ((policy - ref).chunk(2)[0] - (policy - ref).chunk(2)[1]).mean() * BETA
    assert float(tuned_margin) > 0.5


def _perturbed_copy(family: str, source: Path, target: Path) -> Path:
    """``source`` with every weight nudged: a reference that differs from the policy."""
    model = _hf_model(family, source)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(target)
    return target


@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_dpo_step0_loss_equals_trl(family, request, tmp_path):
    from tunesmith.recipes.dpo import recipe_main

    files = request.getfixturevalue(FAMILIES[family][0])
    pairs = write_pairs(tmp_path / "pairs.json", "dog_on_skateboard.jpg", rows=4)
    ref_dir = _perturbed_copy(family, files[0], tmp_path / "reference")
    out = tmp_path / "full"
    cfg = _config(family, files, out, pairs, max_steps_per_epoch=1, **{"optimizer.lr": 1e-3})
    cfg["ref_checkpointer"] = {
        **cfg["checkpointer"],
        "checkpoint_dir": str(ref_dir),
        "output_dir": str(tmp_path / "ref_out"),
    }
    recipe_main(OmegaConf.create(cfg))
    m = read_metrics(out)
    batch = _first_batch(cfg)
    policy = _hf_logps(_hf_model(family, files[0]), family, batch)
    reference = _hf_logps(_hf_model(family, ref_dir), family, batch)
    pc, pr = policy.chunk(2)
    rc, rr = reference.chunk(2)
    n = (batch["labels"][:, 1:] != -100).sum(-1)
    nc, nr = n.chunk(2)
    trl = [
        _trl_pair_loss("sigmoid", BETA, *(float(x[i]) for x in (pc, pr, rc, rr)),
                       int(nc[i]), int(nr[i]))[0]
        for i in range(2)
    ]  # fmt: skip
    assert abs(m["loss"][0] - math.log(2)) > 1e-3  # the reference differs: a real check
    assert m["loss"][0] == pytest.approx(sum(trl) / 2, rel=1e-4)
    assert m["log_probs/chosen"][0] == pytest.approx(float(pc.mean()), rel=1e-4)


def test_kto_with_image_pairs_is_refused(vision_files, tmp_path):  # noqa: F811
    from tunesmith.config import ConfigError
    from tunesmith.recipes.dpo import recipe_main

    pairs = write_pairs(tmp_path / "pairs.json", "dog_on_skateboard.jpg", rows=4)
    cfg = _config("llama3_2_vision", vision_files, tmp_path / "kto", pairs)
    cfg["loss"] = {"_component_": "tunesmith.rlhf.loss.KTOLoss"}
    with pytest.raises(ConfigError, match="not supported with KTO"):
        recipe_main(OmegaConf.create(cfg))


@pytest.mark.parametrize("bad", ["missing", "no_image_column"])
def test_bad_image_rows_name_the_row_and_column(vision_files, tmp_path, bad):  # noqa: F811
    from tunesmith.data import DataRowError
    from tunesmith.datasets.multimodal import multimodal_preference_dataset
    from tunesmith.models.llama3_2_vision import Llama3VisionTransform

    _, _, images, assets, specials = vision_files
    pairs = write_pairs(tmp_path / "pairs.json", "dog_on_skateboard.jpg", rows=4)
    rows = json.loads(pairs.read_text())
    if bad == "missing":
        rows[2]["image"] = "no_such.jpg"
    else:
        del rows[2]["image"]
    pairs.write_text(json.dumps(rows))
    transform = Llama3VisionTransform(
        str(assets / "tiktoken_small.model"), special_tokens_path=str(specials),
        tile_size=28, patch_size=14, max_num_tiles=4,
    )  # fmt: skip
    with pytest.raises(DataRowError) as err:  # a missing file: while the dataset is built
        ds = multimodal_preference_dataset(
            transform, source="json", data_files=str(pairs), image_dir=str(images)
        )
        assert bad != "missing", "a missing image file passed the preflight"
        [ds[i] for i in range(len(ds))]
    assert err.value.row_index == 2 and err.value.column == "image", str(err.value)
