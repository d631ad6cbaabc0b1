"""Config mistakes: files, YAML, overrides, components, unknown keys, numbers out of range."""

from __future__ import annotations

from pathlib import Path

from tests.error_cases._case import ErrorCase
from tests.error_cases._toys import finetune, write_config


def _file(tmp: Path, text: str, name: str = "cfg.yaml") -> list[str]:
    path = tmp / name
    path.write_text(text)
    return ["run", "finetune", "--config", str(path)]


def _misspelt_in_file(tmp: Path) -> list[str]:
    path = write_config(tmp)
    path.write_text(path.read_text().replace("batch_size:", "batchsize:"))
    return ["run", "finetune", "--config", str(path)]


def _validate_misspelt(tmp: Path) -> list[str]:
    path = write_config(tmp)
    path.write_text(path.read_text().replace("batch_size:", "batchsize:"))
    return ["validate", str(path)]


def _range(key: str, value: str, expect: str, kind: str | None = None) -> ErrorCase:
    return ErrorCase(
        kind or f"{key}={value}",
        "config",
        lambda tmp: finetune(tmp, f"{key}={value}"),
        expect,
    )


CASES = [
    ErrorCase(
        "config file not found",
        "config",
        lambda tmp: ["run", "finetune", "--config", str(tmp / "nope.yaml")],
        r"config '.*nope\.yaml' not found",
    ),
    ErrorCase(
        "invalid YAML",
        "config",
        lambda tmp: _file(tmp, "batch_size: 2\n  epochs: 1\n"),
        r"cfg\.yaml:2:\d+: invalid YAML",
    ),
    ErrorCase(
        "config that is a list",
        "config",
        lambda tmp: _file(tmp, "- batch_size: 2\n"),
        r"the top level must be a mapping",
    ),
    ErrorCase(
        "override without '='",
        "config",
        lambda tmp: finetune(tmp, "batch_size"),
        r"override 'batch_size' has no '='",
    ),
    ErrorCase(
        "override of the wrong type",
        "config",
        lambda tmp: finetune(tmp, "optimizer.lr=fast"),
        r"optimizer\.lr expects a number",
    ),
    ErrorCase(
        "override deleting a missing key",
        "config",
        lambda tmp: finetune(tmp, "~optimizer.betas"),
        r"no key 'optimizer\.betas' to delete",
    ),
    ErrorCase(
        "misspelt key on the command line",
        "config",
        lambda tmp: finetune(tmp, "batch_sise=2"),
        r"unknown config key 'batch_sise' for recipe finetune \(override batch_sise=2\): "
        r"did you mean batch_size\?",
    ),
    ErrorCase(
        "misspelt key in the file",
        "config",
        _misspelt_in_file,
        r"unknown config key 'batchsize' for recipe finetune \(cfg\.yaml\): did you mean batch_size",
    ),
    ErrorCase(
        "validate: misspelt key",
        "config",
        _validate_misspelt,
        r"batchsize: unknown config key for recipe finetune \(cfg\.yaml\)",
    ),
    ErrorCase(
        "key of another recipe",
        "config",
        lambda tmp: finetune(tmp, "kd_ratio=0.5"),
        r"unknown config key 'kd_ratio' for recipe finetune",
    ),
    ErrorCase(
        "misspelt component argument",
        "config",
        lambda tmp: finetune(tmp, "optimizer.lrr=1e-3"),
        r"optimizer\.lrr: torch\.optim\.AdamW has no argument 'lrr'\. Did you mean lr\?",
    ),
    ErrorCase(
        "misspelt component",
        "config",
        lambda tmp: finetune(tmp, "optimizer._component_=torch.optim.AdamX"),
        r"cannot resolve _component_ 'torch\.optim\.AdamX'.*Did you mean torch\.optim\.Adam",
    ),
    ErrorCase(
        "broken interpolation",
        "config",
        lambda tmp: finetune(tmp, "metric_logger.log_dir=${output_dirr}/logs"),
        r"output_dirr",
    ),
    ErrorCase(
        "unknown log level",
        "config",
        lambda tmp: finetune(tmp, "log_level=LOUD"),
        r"log_level: 'LOUD' is not a log level",
    ),
    _range("epochs", "0", r"^error: epochs: must be an integer >= 1, got 0"),
    _range("batch_size", "-1", r"^error: batch_size: must be an integer >= 1, got -1"),
    _range("batch_size", "2.5", r"^error: batch_size: must be an integer >= 1, got 2\.5"),
    _range("gradient_accumulation_steps", "0", r"gradient_accumulation_steps: must be an integer"),
    _range(
        "max_steps_per_epoch", "-1", r"max_steps_per_epoch: must be an integer >= 1 \(or null\)"
    ),
    _range("log_every_n_steps", "0", r"log_every_n_steps: must be an integer >= 1"),
    _range("save_every_n_steps", "0", r"save_every_n_steps: must be an integer >= 1"),
    _range("keep_last_n_checkpoints", "0", r"keep_last_n_checkpoints: must be an integer >= 1"),
    _range("num_workers", "-2", r"num_workers: must be an integer >= 0"),
    _range("clip_grad_norm", "0", r"clip_grad_norm: must be a number > 0 \(or null\)"),
    _range("optimizer.lr", "-1e-4", r"optimizer\.lr: must be a number >= 0, got -0\.0001"),
    _range("model.lora_rank", "0", r"model\.lora_rank: must be an integer >= 1", "lora_rank=0"),
    _range("model.lora_alpha", "-16", r"model\.lora_alpha: must be a number > 0", "lora_alpha<0"),
    _range("seed", "-5", r"seed: must be an integer >= 0"),
]

CASES += [
    ErrorCase(
        "unknown device",
        "config",
        lambda tmp: finetune(tmp, "device=gpu"),
        r"device: 'gpu' is not a device",
    ),
    ErrorCase(
        "unknown dtype",
        "config",
        lambda tmp: finetune(tmp, "dtype=float8"),
        r"dtype: 'float8' is not a supported dtype; use fp32, bf16 or fp16",
    ),
    ErrorCase(
        "override of a section with a value",
        "config",
        lambda tmp: finetune(tmp, "optimizer=adamw"),
        r"optimizer is a .*not a single value",
    ),
    ErrorCase(
        "argument the recipe passes itself",
        "config",
        lambda tmp: finetune(
            tmp,
            "lr_scheduler._component_=tunesmith.training.lr_schedulers."
            "get_cosine_schedule_with_warmup",
            "lr_scheduler.num_warmup_steps=1",
            "lr_scheduler.optimizer=x",
        ),
        r"lr_scheduler\.optimizer: .*the recipe passes 'optimizer' itself",
    ),  # fmt: skip
    ErrorCase(
        "misspelt section added on the command line",
        "config",
        lambda tmp: finetune(tmp, "+optimiser.lr=1e-4"),
        r"unknown config key 'optimiser' for recipe finetune \(override \+optimiser\.lr=1e-4\): "
        r"did you mean optimizer\?",
    ),
]
