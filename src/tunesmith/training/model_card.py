"""A Hugging Face model card (``README.md``) for a saved checkpoint folder, from its run's files.

What a training run leaves beside its checkpoints is read, never written: the logged config
(``<log dir>/config.json``), the run summary (``run_summary.json``), the DiskLogger metrics
(``log*.jsonl``) and their loss plot (``.png``, see :mod:`tunesmith.training.plot`), and an
eval recipe's ``results.json``. Whatever is missing is left out of the card.

The card starts with the Hub's YAML front matter (``base_model``, ``library_name``,
``tags``, ``pipeline_tag``, ``datasets`` / ``license`` when known), then the method, the
data, the hyperparameters, a loss table (and the plot when the upload carries it) and the
eval scores.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunRecord", "find_run", "model_card"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# loss component name -> (method shown in the card, Hub tag)
_LOSS_METHODS = {
    "DPO": ("DPO", "dpo"),
    "RSO": ("RSO", "dpo"),
    "IPO": ("IPO", "dpo"),
    "SimPO": ("SimPO", "simpo"),
    "ORPO": ("ORPO", "orpo"),
    "KTO": ("KTO", "kto"),
    "KL": ("knowledge distillation", "knowledge-distillation"),
    "GRPO": ("GRPO", "grpo"),
    "PPO": ("PPO", "ppo"),
}


@dataclass
class RunRecord:
    """What a run left on disk (every field optional)."""

    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics_file: Path | None = None
    plot: Path | None = None
    results: dict[str, Any] | None = None
    recipe: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def find_run(
    folder: str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    recipe: str | None = None,
) -> RunRecord:
    """The run record of checkpoint ``folder``: its log folder is ``run_dir`` or the first of
    ``folder/logs``, ``folder/../logs``, ``folder/..`` holding a logged ``config.json`` or a
    ``log*.jsonl``; ``results.json`` is ``results`` or the first in the folder, its parent or
    the log folder."""
    folder = Path(folder)
    candidates = [Path(run_dir)] if run_dir else [folder / "logs", folder.parent / "logs"]
    candidates += [] if run_dir else [folder.parent]
    logs = next(
        (d for d in candidates if (d / "config.json").is_file() or any(d.glob("log*.jsonl"))),
        None,
    )
    record = RunRecord(recipe=recipe)
    if logs is not None:
        record.config = _read_json(logs / "config.json")
        record.summary = _read_json(logs / "run_summary.json")
        named = (record.summary.get("output") or {}).get("metrics_file")
        jsonl = [Path(named)] if named and Path(named).is_file() else []
        jsonl = jsonl or sorted(logs.glob("log*.jsonl"), key=lambda p: p.stat().st_mtime)[-1:]
        if jsonl:
            record.metrics_file = jsonl[0]
            png = jsonl[0].with_suffix(".png")
            record.plot = png if png.is_file() else None
    places = [Path(results)] if results else [folder, folder.parent, *([logs] if logs else [])]
    for place in places:
        path = place if place.suffix == ".json" else place / "results.json"
        if path.is_file() and isinstance(_read_json(path).get("results"), dict):
            record.results = _read_json(path)
            break
    return record


# ------------------------------------------------------------------------------- facts
def _component(node: Any) -> str | None:
    if not isinstance(node, Mapping) or node.get("_component_") is None:
        return None
    return str(node["_component_"])


def _short(component: str | None) -> str | None:
    return None if component is None else component.rsplit(".", 1)[-1]


def base_model(folder: Path, config: Mapping[str, Any]) -> str | None:
    """The base model's Hub id: the ``.tunesmith-manifest.json`` of the checkpoint the run
    read (``tunesmith download`` writes it), else a repo-like ``_name_or_path`` /
    ``base_model_name_or_path`` that is not a local path."""
    ckpt = config.get("checkpointer") or {}
    source = Path(str(ckpt.get("checkpoint_dir"))) if ckpt.get("checkpoint_dir") else None
    if source is not None:
        manifest = _read_json(source / ".tunesmith-manifest.json")
        if isinstance(manifest.get("repo_id"), str):
            return manifest["repo_id"]
    for path, key in (
        (folder / "adapter_config.json", "base_model_name_or_path"),
        (folder / "adapter" / "adapter_config.json", "base_model_name_or_path"),
        (folder / "config.json", "_name_or_path"),
        *(((source / "config.json", "_name_or_path"),) if source else ()),
    ):
        name = _read_json(path).get(key)
        if isinstance(name, str) and _REPO_ID.match(name) and not Path(name).exists():
            return name
    return None


def _license(config: Mapping[str, Any]) -> str | None:
    """The base checkpoint's README front-matter ``license``, when it has one."""
    ckpt = config.get("checkpointer") or {}
    if not ckpt.get("checkpoint_dir"):
        return None
    readme = Path(str(ckpt["checkpoint_dir"])) / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.match(r"^---\n(.*?)\n---", text, re.S)
    found = re.search(r"^license:\s*(\S+)\s*$", match.group(1), re.M) if match else None
    return found.group(1) if found else None


def method(folder: Path, record: RunRecord) -> tuple[str, list[str]]:
    """``(what trained, Hub tags)``: full / LoRA / QLoRA / DoRA (+ DPO, KD, ... from the loss
    component or the recipe name)."""
    cfg, model = record.config, record.summary.get("model") or {}
    adapter = model.get("adapter") or {}
    marker = _read_json(folder / ".complete")
    kind = adapter.get("type")
    if kind is None and (cfg.get("model") or {}).get("lora_rank") is not None:
        kind = "DoRA" if (cfg.get("model") or {}).get("use_dora") else "LoRA"
    if kind is None and marker.get("has_adapter"):
        kind = "LoRA"
    text, tags = ("full finetune", []) if kind is None else (kind, ["peft", "lora", kind.lower()])
    if kind:
        text += " finetune"
    if kind and adapter.get("r") is not None:
        text += f" (rank {adapter['r']}, alpha {float(adapter.get('lora_alpha', 0)):g})"
    loss = _short(_component(cfg.get("loss"))) or ""
    recipe = (record.recipe or "").lower().replace("_", "-")
    for key, (name, tag) in _LOSS_METHODS.items():  # the loss names the method first
        if loss.startswith(key):
            return f"{name}, {text}", [tag, *tags]
    for name, tag in _LOSS_METHODS.values():
        if recipe == tag:
            return f"{name}, {text}", [tag, *tags]
    if recipe and recipe != "finetune":
        return f"{recipe.replace('-', ' ')}, {text}", [recipe, *tags]
    if cfg.get("quantizer") is not None and "QAT" in (_component(cfg.get("quantizer")) or ""):
        return f"QAT, {text}", ["qat", *tags]
    return f"supervised {text}", ["sft", *tags]


def _datasets(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    node = config.get("dataset")
    nodes = node if isinstance(node, list) else [node] if isinstance(node, Mapping) else []
    out = []
    for n in nodes:
        if not isinstance(n, Mapping):
            continue
        entry = {"component": _component(n), "source": n.get("source")}
        for key in ("data_files", "name", "subset", "split"):
            if n.get(key) is not None:
                entry[key] = n[key]
        if entry.get("data_files") is not None:  # a local file: its name, not where it lives
            files = entry["data_files"]
            files = files if isinstance(files, list) else [files]
            names = [Path(str(f)).name if Path(str(f)).exists() else f for f in files]
            entry["data_files"] = names[0] if len(names) == 1 else names
        out.append(entry)
    return out


def hyperparameters(record: RunRecord) -> dict[str, Any]:
    """The numbers that describe the run (only those the config or summary holds)."""
    cfg, data = record.config, record.summary.get("data") or {}
    model, adapter = cfg.get("model") or {}, (record.summary.get("model") or {}).get("adapter")
    optimizer, scheduler = cfg.get("optimizer") or {}, cfg.get("lr_scheduler") or {}
    batch = data.get("batch") or {}
    values: dict[str, Any] = {
        "learning rate": optimizer.get("lr"),
        "optimizer": _short(_component(optimizer)),
        "weight decay": optimizer.get("weight_decay"),
        "lr scheduler": _short(_component(scheduler)),
        "warmup steps": scheduler.get("num_warmup_steps"),
        "epochs": cfg.get("epochs"),
        "max steps per epoch": cfg.get("max_steps_per_epoch"),
        "total steps": data.get("total_steps"),
        "batch size (per device)": cfg.get("batch_size"),
        "gradient accumulation steps": cfg.get("gradient_accumulation_steps"),
        "effective batch size": batch.get("effective"),
        "max sequence length": (cfg.get("tokenizer") or {}).get("max_seq_len"),
        "packed": (cfg.get("dataset") or {}).get("packed") if isinstance(cfg.get("dataset"), Mapping) else None,
        "LoRA rank": (adapter or {}).get("r", model.get("lora_rank")),
        "LoRA alpha": (adapter or {}).get("lora_alpha", model.get("lora_alpha")),
        "LoRA dropout": model.get("lora_dropout"),
        "LoRA targets": ", ".join((adapter or {}).get("target_modules") or []) or None,
        "dtype": cfg.get("dtype"),
        "seed": cfg.get("seed"),
        "loss": _short(_component(cfg.get("loss"))),
    }  # fmt: skip
    if not adapter and model.get("lora_rank") is None:
        for key in ("LoRA rank", "LoRA alpha", "LoRA dropout", "LoRA targets"):
            values[key] = None
    return {k: v for k, v in values.items() if v is not None}


def loss_rows(metrics_file: Path | None, rows: int = 10) -> list[tuple[int, float]]:
    """Up to ``rows`` ``(step, loss)`` points, evenly spread, the first and the last included."""
    if metrics_file is None:
        return []
    from tunesmith.training.plot import read_metrics

    try:
        series = read_metrics(metrics_file).get("loss", [])
    except (OSError, ValueError):
        return []
    if len(series) <= rows:
        return series
    picks = sorted({round(i * (len(series) - 1) / (rows - 1)) for i in range(rows)})
    return [series[i] for i in picks]


def _eval_rows(results: Mapping[str, Any] | None) -> list[tuple[str, str, float]]:
    rows = []
    for task, metrics in sorted(((results or {}).get("results") or {}).items()):
        for name, value in (metrics or {}).items():
            if "stderr" in name or name == "alias" or not isinstance(value, int | float):
                continue
            rows.append((task, name.split(",")[0], float(value)))
    return rows


# -------------------------------------------------------------------------------- card
def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # a JSON scalar / list is valid YAML flow syntax


def model_card(
    folder: str | os.PathLike[str],
    repo_id: str,
    record: RunRecord,
    *,
    plot_name: str | None = None,
    base: str | None = None,
) -> str:
    """The ``README.md`` text for ``folder`` uploaded as ``repo_id``; ``plot_name`` is the
    loss plot's path in the upload (None: no image), ``base`` overrides the base model."""
    folder = Path(folder)
    base = base or base_model(folder, record.config)
    what, method_tags = method(folder, record)
    marker = _read_json(folder / ".complete")
    adapter_only = marker.get("has_adapter") and not marker.get("has_model")
    adapter_only = adapter_only or (not marker and (folder / "adapter_config.json").is_file())
    family = (record.summary.get("model") or {}).get("family") or (
        (record.config.get("checkpointer") or {}).get("model_type")
    )
    pipeline = "text-classification" if family == "REWARD" else "text-generation"
    tags = ["tunesmith", *dict.fromkeys(method_tags)]
    datasets = _datasets(record.config)
    hub_datasets = [
        d["source"]
        for d in datasets
        if isinstance(d.get("source"), str) and _REPO_ID.match(d["source"])
    ]
    front = {
        "base_model": base,
        "library_name": "peft" if adapter_only else "transformers",
        "pipeline_tag": pipeline,
        "tags": tags,
        "datasets": hub_datasets or None,
        "license": _license(record.config),
    }
    lines = ["---"]
    lines += [f"{k}: {_yaml_value(v)}" for k, v in front.items() if v is not None]
    lines += ["---", "", f"# {repo_id.split('/')[-1]}", ""]
    lines.append(
        f"This model is {'a ' + what + ' adapter of' if adapter_only else 'a ' + what + ' of'} "
        f"{f'[{base}](https://huggingface.co/{base})' if base else 'a local base model'}, "
        "trained with tunesmith."
    )
    if family:
        lines.append(f"Model family: `{family}`.")
    lines += ["", "## Training data", ""]
    if datasets:
        for d in datasets:
            detail = ", ".join(f"{k} `{v}`" for k, v in d.items() if k != "component")
            lines.append(f"- `{d['component']}`" + (f" ({detail})" if detail else ""))
        rows = (record.summary.get("data") or {}).get("rows")
        if rows:
            tokens = (record.summary.get("data") or {}).get("tokens")
            lines.append(f"- {rows:,} rows" + (f", {tokens:,} tokens" if tokens else ""))
    else:
        lines.append("Not recorded (no logged run config was found beside the checkpoint).")
    params = hyperparameters(record)
    if params:
        lines += ["", "## Hyperparameters", "", "| name | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in params.items()]
    losses = loss_rows(record.metrics_file)
    if losses:
        lines += ["", "## Training loss", ""]
        if plot_name:
            lines += [f"![training loss]({plot_name})", ""]
        lines += ["| step | loss |", "|---|---|"]
        lines += [f"| {step} | {value:.4f} |" for step, value in losses]
        lines += ["", f"Final training loss: {losses[-1][1]:.4f} (step {losses[-1][0]})."]
    scores = _eval_rows(record.results)
    if scores:
        lines += ["", "## Evaluation", "", "| task | metric | value |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v:.4f} |" for t, m, v in scores]
    lines += ["", "## Use", "", "```python"]
    if adapter_only:
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        ]
    lines += ["```", ""]
    return "\n".join(lines)
