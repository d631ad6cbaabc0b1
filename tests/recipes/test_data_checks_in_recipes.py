"""Every training recipe checks its data before any weights load, skips rows with nothing to
train on (one warning, never ``loss=0``), and resumes exactly on the kept rows (issue 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.recipes._recipe_toys import write_instruct_data
from tests.recipes.conftest import base_config, read_losses
from tunesmith.data import DataError


def _no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading any checkpoint (or building a model) fails the test."""
    from tunesmith.recipes import dpo, finetune, knowledge_distillation
    from tunesmith.training.checkpointing import _hf

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("weights were read before the data was checked")

    monkeypatch.setattr(_hf.FullModelHFCheckpointer, "load_checkpoint", refuse)
    for module in (finetune, dpo, knowledge_distillation):  # imported before patching
        monkeypatch.setattr(module, "build_model", refuse)


def _with_untrained_rows(path: Path) -> Path:
    """The toy instruct rows with 3 empty answers and 1 prompt longer than max_seq_len=256."""
    rows = json.loads(write_instruct_data(path, n=48).read_text())
    for i in (2, 9, 30):
        rows[i]["output"] = ""
    rows[17]["input"] = "long " * 80
    path.write_text(json.dumps(rows))
    return path


def _recipe_cfg(recipe: str, tmp_path: Path, tiny_llama: Path, data: Path) -> dict[str, Any]:
    if recipe == "dpo":
        from tests.recipes.test_dpo import dpo_config

        return dpo_config(tmp_path / "out", tiny_llama, data)
    if recipe == "knowledge_distillation":
        from tests.recipes.test_knowledge_distillation import kd_config

        return kd_config(tmp_path / "out", tiny_llama, tiny_llama, data)
    cfg = base_config(tmp_path / "out", tiny_llama, data)
    if recipe == "qat":
        cfg["quantizer"] = {
            "_component_": "tunesmith.quantization.Int8DynActInt4WeightQATQuantizer",
            "groupsize": 32,
        }
    return cfg


@pytest.mark.parametrize("recipe", ["finetune", "qat", "dpo", "knowledge_distillation"])
def test_bad_data_fails_before_any_weights_load(
    recipe: str, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    data = tmp_path / "broken.jsonl"
    data.write_text('{"question": "q", "response_j": "a", "response_k": "b"}\n{"question": \n')
    cfg = _recipe_cfg(recipe, tmp_path, tiny_llama, data)
    _no_weights(monkeypatch)
    recipe_main = importlib.import_module(f"tunesmith.recipes.{recipe}").recipe_main
    with pytest.raises(DataError, match=rf"malformed JSON \({data}, line 2"):
        recipe_main(OmegaConf.create(cfg))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


def test_vocabulary_mismatch_fails_before_the_model_is_built(
    tmp_path: Path, instruct_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.recipes._recipe_toys import write_tiny_llama
    from tunesmith.recipes import finetune
    from tunesmith.recipes.finetune import recipe_main

    small = write_tiny_llama(tmp_path / "small", vocab_size=200)
    monkeypatch.setattr(finetune, "build_model", lambda *a, **k: pytest.fail("built"))
    cfg = base_config(tmp_path / "out", small, instruct_data)
    with pytest.raises(DataError, match=r"token id 258 .* vocabulary of 200 ids .*ByteChat"):
        recipe_main(OmegaConf.create(cfg))


def test_untrained_rows_are_skipped_not_trained_on(
    tiny_llama: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from tunesmith.recipes.finetune import recipe_main

    data = _with_untrained_rows(tmp_path / "rows.json")
    cfg = base_config(tmp_path / "out", tiny_llama, data, batch_size=1, max_steps_per_epoch=44)
    recipe_main(OmegaConf.create(cfg))
    captured = capfd.readouterr()
    text = captured.out + captured.err
    skipped = [line for line in text.splitlines() if "skipped 4 of 48" in line]
    assert len(skipped) == 1 and "rows with no trained token" in skipped[0]
    assert "(rows 2, 9, 17, 30;" in skipped[0] and "3 empty, 1 cut away" in skipped[0]
    losses = read_losses(tmp_path / "out")
    assert len(losses) == 44 and min(losses) > 0.0  # every step has trained tokens


@pytest.mark.slow
def test_resume_on_skipped_rows_continues_the_same_curve(tiny_llama: Path, tmp_path: Path) -> None:
    from tunesmith.recipes.finetune import recipe_main

    data = _with_untrained_rows(tmp_path / "rows.json")

    def run(name: str, **over: Any) -> Path:
        cfg = base_config(
            tmp_path / name, tiny_llama, data, max_steps_per_epoch=6, save_every_n_steps=3, **over
        )
        recipe_main(OmegaConf.create(cfg))
        return tmp_path / name

    whole = read_losses(run("whole"))
    out = run("cut")
    shutil.rmtree(out / "epoch_1")  # as if the run had died after step 3's checkpoint
    run("cut", resume_from_checkpoint=True)
    assert read_losses(out)[-3:] == pytest.approx(whole[3:], abs=1e-5)
