"""What a training run says and records: the summary before step 1 (printed and in
run_summary.json), the compile time, and one metrics file / curve across a resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.recipes.conftest import LORA


def _records(out: Path) -> list[dict[str, Any]]:
    (path,) = (out / "logs").glob("log_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _loss_by_step(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in _records(out) if "loss" in r]


@pytest.mark.slow
def test_metrics_file_is_one_run_across_a_resume(run_finetune, capsys) -> None:
    """10 steps, vs. a run that died after step 5's checkpoint (its log already holds steps
    6-8) and was resumed: one metrics file (the default time-stamped name) with steps 1-10
    once each, the uninterrupted losses, and a curve of all 10 steps."""
    from tunesmith.training.plot import read_metrics

    over: dict[str, Any] = {
        "max_steps_per_epoch": 10,
        "save_every_n_steps": 5,
        "metric_logger.filename": None,
        "batch_size": 2,
    }
    whole = _loss_by_step(run_finetune("whole", **over))
    assert [s for s, _ in whole] == list(range(1, 11))

    out = run_finetune("cut", **over)
    shutil.rmtree(out / "epoch_1")  # died after step 8: its log has 6-8 beyond step 5's save
    (log_file,) = (out / "logs").glob("log_*.jsonl")
    lines = log_file.read_text().splitlines(keepends=True)
    log_file.write_text("".join(lines[:8]))
    capsys.readouterr()
    run_finetune("cut", resume_from_checkpoint=True, **over)
    assert list((out / "logs").glob("log_*.jsonl")) == [log_file]
    resumed = _loss_by_step(out)
    assert [s for s, _ in resumed] == list(range(1, 11))
    assert [v for _, v in resumed] == pytest.approx([v for _, v in whole], abs=1e-5)
    assert [s for s, _ in read_metrics(log_file)["loss"]] == list(range(1, 11))
    assert log_file.with_suffix(".png").is_file()

    printed = capsys.readouterr().out  # INFO goes to stdout
    assert "resuming after step 5 of 10 (epoch 1)" in printed
    summary = json.loads((out / "logs" / "run_summary.json").read_text())
    assert summary["resume"] == {"step": 5, "epoch": 1, "total_steps": 10}
    assert len(summary["earlier_starts"]) == 1 and "resume" not in summary["earlier_starts"][0]
    assert summary["output"]["metrics_file"] == str(log_file)


def test_summary_before_step_one(
    run_finetune, tiny_llama: Path, instruct_data: Path, capsys
) -> None:
    """LoRA on packed data: the printed lines and run_summary.json agree with counts taken
    elsewhere (transformers' parameter count, the data file, the packer)."""
    import torch
    import transformers

    over: dict[str, Any] = {
        **{f"model.{k}": v for k, v in LORA.items()},
        "dataset.packed": True,
        "max_steps_per_epoch": 2,
        "gradient_accumulation_steps": 2,
        "batch_size": 2,
    }
    out = run_finetune("packed", **over)
    printed = capsys.readouterr().out  # INFO goes to stdout, the bar to stderr
    summary = json.loads((out / "logs" / "run_summary.json").read_text())

    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama).num_parameters()
    m = summary["model"]
    assert m["builder"] == "tunesmith.models.build_from_hf" and m["family"] == "LLAMA3"
    assert 0 < m["trainable_parameters"] < m["parameters"]
    assert m["parameters"] - m["trainable_parameters"] == base  # the adapters are the extra
    assert m["adapter"]["r"] == LORA["lora_rank"] and m["adapter"]["type"] == "LoRA"
    rows = len(json.loads(instruct_data.read_text()))
    d = summary["data"]
    assert d["rows"] == rows and d["packs"] is not None and d["pack_length"] == 256
    assert 0 < d["trained_tokens"] < d["tokens"] <= d["packs"] * 256
    assert (d["steps_per_epoch"], d["total_steps"], d["batch"]["effective"]) == (2, 2, 4)
    assert summary["precision"] == {"parameters": "fp32", "compute": "fp32"}
    assert summary["devices"]["device"] == "cpu" and summary["devices"]["world_size"] == 1
    assert summary["devices"]["torch"] == torch.__version__
    assert summary["output"]["checkpoint_dir"] == str(out)
    assert "compile" not in summary and "resume" not in summary

    for text in (
        f"{m['parameters']:,} parameters, {m['trainable_parameters']:,} trainable",
        "LoRA rank 8, alpha 16 on q_proj, v_proj, output_proj, w1, w2, w3",
        f"{rows:,} rows in {d['packs']:,} packs of 256 tokens",
        f"{d['tokens']:,} tokens ({d['trained_tokens']:,} trained)",
        "2 steps/epoch x 1 epoch(s) = 2 steps | batch 2 x accumulation 2 x 1 process(es) = 4",
        "precision: parameters fp32 | compute fp32",
        "devices: cpu ",
        f"this summary -> {out / 'logs' / 'run_summary.json'}",
    ):
        assert text in printed, text
    said = [line.split("] ", 1)[1] for line in printed.splitlines() if "_finetune_observe" in line]
    heads = [line.split(":", 1)[0] for line in said[:5]]
    assert heads == ["model", "data", "precision", "devices", "output"], said
    assert said[5:] == [f"loss curve written to {out / 'logs' / 'log.png'}"], said  # no spam
    run_log = (out / "logs" / "run.log").read_text()  # all of it is kept in the log folder
    assert summary["output"]["log_file"] == str(out / "logs" / "run.log")
    for text in ("] runtime: cpu", "] model: ", "] data: ", "] output: ", "saved checkpoint to"):
        assert text in run_log, text


@pytest.mark.slow
def test_compiled_run_says_how_long_compiling_took(run_finetune, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_COMPILE_BACKEND", "eager")  # compile for real, cheaply
    out = run_finetune("compiled", compile=True, max_steps_per_epoch=3)
    printed = capsys.readouterr().out
    assert "compiling the model (torch.compile: each of the 2 layers + the loss)" in printed
    assert "torch.compile: done in" in printed
    summary = json.loads((out / "logs" / "run_summary.json").read_text())
    assert summary["compile"]["seconds"] >= 0 and summary["compile"]["first_step_seconds"] > 0


def test_observer_resumes_the_logger_and_times_compiling(tmp_path: Path, capsys) -> None:
    """Unit level: on resume the DiskLogger continues the interrupted file from ``initial``;
    with compile on, step 1's extra time over step 2 is reported and recorded."""
    import time
    from types import SimpleNamespace

    import torch
    from torch.utils.data import DataLoader

    from tunesmith.recipes._finetune_observe import Observer
    from tunesmith.recipes._run_summary import describe_run

    logs = tmp_path / "logs"
    logs.mkdir()
    old = logs / "log_100.jsonl"
    old.write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(1, 5)))
    cfg = OmegaConf.create(
        {
            "output_dir": str(tmp_path),
            "model": {"_component_": "torch.nn.Linear"},
            "compile": True,
            "resume_from_checkpoint": True,
            "metric_logger": {
                "_component_": "tunesmith.training.metric_logging.DiskLogger",
                "log_dir": str(logs),
            },
        }
    )
    model = torch.nn.Linear(4, 3)
    model.weight.requires_grad_(False)
    summary = describe_run(
        cfg, model=model, loader=DataLoader(list(range(10)), batch_size=2),
        checkpointer=SimpleNamespace(output_dir=tmp_path), device=torch.device("cpu"),
        dtype=torch.float32, world_size=1, steps_per_epoch=5, epochs=2, accum=1,
        is_peft=False, resumed_step=2,
    )  # fmt: skip
    observer = Observer(
        cfg, rank=0, world_size=1, device=torch.device("cpu"), total_steps=10, initial=2,
        summary=summary,
    )  # fmt: skip
    tokens = torch.tensor(8)
    time.sleep(0.3)  # "compiling"
    observer.log_step(3, loss=1.0, lr=0.1, tokens=tokens, grad_norm=None)
    observer.log_step(4, loss=0.5, lr=0.1, tokens=tokens, grad_norm=None)
    observer.close()
    printed = capsys.readouterr().out
    assert [json.loads(x)["step"] for x in old.read_text().splitlines()] == [1, 2, 3, 4]
    assert [json.loads(x)["loss"] for x in old.read_text().splitlines()][2:] == [1.0, 0.5]
    assert "model: torch.nn.Linear | 15 parameters, 3 trainable (20.00%)" in printed
    assert "10 rows | tokens not counted" in printed and "resuming after step 2 of 10" in printed
    assert "precision: parameters fp32 | compute fp32" in printed
    assert "torch.compile: done in" in printed
    recorded = json.loads((logs / "run_summary.json").read_text())
    assert recorded["compile"]["first_step_seconds"] >= 0.3
    assert recorded["compile"]["seconds"] >= 0.25
    assert recorded["output"]["metrics_file"] == str(old)


@pytest.mark.slow
def test_dpo_and_distillation_print_their_summary(tiny_llama, instruct_data, tmp_path) -> None:
    """The other training recipes use the same summary, with the frozen model counted."""
    from tests.recipes.test_dpo import dpo_config, write_preference_data
    from tests.recipes.test_knowledge_distillation import kd_config
    from tunesmith.recipes import dpo, knowledge_distillation

    pairs = write_preference_data(tmp_path / "pairs.json")
    out = tmp_path / "dpo"
    dpo.recipe_main(OmegaConf.create(dpo_config(out, tiny_llama, pairs, max_steps_per_epoch=1)))
    summary = json.loads((out / "logs" / "run_summary.json").read_text())
    assert summary["model"]["reference"]["parameters"] == summary["model"]["parameters"]

    out = tmp_path / "kd"
    cfg = kd_config(out, tiny_llama, tiny_llama, instruct_data, max_steps_per_epoch=1)
    knowledge_distillation.recipe_main(OmegaConf.create(cfg))
    summary = json.loads((out / "logs" / "run_summary.json").read_text())
    assert summary["model"]["teacher"]["parameters"] == summary["model"]["parameters"]
    assert summary["data"]["total_steps"] == 1
