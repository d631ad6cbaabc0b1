"""The machine, not the input: missing optional packages, no GPU, no network, torchrun ranks.

Cases about packages hide them with ``_hide/sitecustomize.py`` (``TS_HIDE_PACKAGES``), so they
hold whether or not the package is installed. Cases about CUDA or the hub's environment
variables run in a fresh process (those are read once, at import).
"""

from __future__ import annotations

from pathlib import Path

from tests.error_cases._case import ErrorCase
from tests.error_cases._toys import finetune, write_config

HIDE = str(Path(__file__).resolve().parent / "_hide")


def _hidden(package: str) -> dict[str, str]:
    return {"PYTHONPATH": HIDE, "TS_HIDE_PACKAGES": package}


def _logger(name: str, **kwargs: str) -> object:
    return lambda tmp: finetune(
        tmp,
        **{
            "metric_logger": {
                "_component_": f"tunesmith.training.metric_logging.{name}",
                "log_dir": str(tmp / "out" / "logs"),
                **kwargs,
            }
        },
    )


def _no_gpu_torchrun(tmp: Path) -> list[str]:
    cfg = write_config(tmp, device="cuda")
    return ["run", "--standalone", "--nproc_per_node", "2", "finetune", "--config", str(cfg)]


CASES = [
    ErrorCase(
        "TensorBoardLogger without tensorboard",
        "environment",
        _logger("TensorBoardLogger"),
        r"tensorboard is not installed \(TensorBoardLogger needs it\): install it with "
        r"pip install 'tunesmith\[tensorboard\]'",
        env=_hidden("tensorboard"),
    ),
    ErrorCase(
        "WandBLogger without wandb",
        "environment",
        _logger("WandBLogger", mode="offline"),
        r"wandb is not installed \(WandBLogger needs it\): install it with "
        r"pip install 'tunesmith\[wandb\]'",
        env=_hidden("wandb"),
    ),
    ErrorCase(
        "CometLogger without comet_ml",
        "environment",
        _logger("CometLogger"),
        r"comet_ml is not installed .*pip install 'tunesmith\[comet\]'",
        env=_hidden("comet_ml"),
    ),
    ErrorCase(
        "MLFlowLogger without mlflow",
        "environment",
        _logger("MLFlowLogger"),
        r"mlflow is not installed .*pip install 'tunesmith\[mlflow\]'",
        env=_hidden("mlflow"),
    ),
    ErrorCase(
        "bitsandbytes optimizer without bitsandbytes",
        "environment",
        lambda tmp: finetune(tmp, "optimizer._component_=bitsandbytes.optim.PagedAdamW8bit"),
        r"'bitsandbytes' is an optional dependency that is not installed; install it with "
        r"pip install 'tunesmith\[bnb\]'",
        env=_hidden("bitsandbytes"),
    ),
    ErrorCase(
        "eval without lm-eval",
        "environment",
        lambda tmp: ["run", "eval", "--config", "llama3_2/evaluation", f"output_dir={tmp / 'out'}"],
        r"lm_eval is not installed.*pip install 'tunesmith\[eval\]'",
        env=_hidden("lm_eval"),
    ),
    ErrorCase(
        "device=cuda without a GPU",
        "environment",
        lambda tmp: finetune(tmp, "device=cuda"),
        r"device: 'cuda' asked for CUDA but no GPU is available; set device=cpu",
        env={"CUDA_VISIBLE_DEVICES": ""},
        subprocess=True,
    ),
    ErrorCase(
        "torchrun ranks without a GPU",
        "environment",
        _no_gpu_torchrun,
        r"device: 'cuda' asked for CUDA but no GPU is available",
        env={"CUDA_VISIBLE_DEVICES": ""},
        subprocess=True,
    ),
    ErrorCase(
        "download with the hub offline",
        "environment",
        lambda tmp: ["download", "Qwen/Qwen2.5-0.5B", "--output-dir", str(tmp / "out")],
        r"offline mode is on \(HF_HUB_OFFLINE=1\); unset HF_HUB_OFFLINE",
        env={"HF_HUB_OFFLINE": "1"},
        subprocess=True,
    ),
]
