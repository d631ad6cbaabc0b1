"""What a training run is about to do, said once before step 1 and kept in the log folder.

:func:`describe_run` gathers the facts (model, data, precision, devices, output) as a plain
dict; :func:`summary_lines` turns it into the few INFO lines the recipes print. The observer
(``_finetune_observe.Observer``) prints them and writes the dict to ``run_summary.json`` next
to the metrics. Every training recipe (finetune, qat, dpo, knowledge_distillation) calls it.

Datasets may report more than their length; the summary reads, when present:
``num_skipped_rows`` (rows dropped because nothing in them is trained on), and
``token_counts()`` -> ``(tokens, trained_tokens)`` or None when not known without a pass over
the data (lazily tokenized rows).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

__all__ = ["describe_run", "summary_lines"]


def describe_run(
    cfg: DictConfig,
    *,
    model: nn.Module,
    loader: DataLoader,
    checkpointer: Any,
    device: torch.device,
    dtype: torch.dtype,
    world_size: int,
    steps_per_epoch: int,
    epochs: int,
    accum: int,
    is_peft: bool,
    resumed_step: int | None = None,
    extra_models: dict[str, nn.Module] | None = None,
    step_cap: int | None = None,
) -> dict[str, Any]:
    """The run's facts as JSON-ready sections ``model``, ``data``, ``precision``, ``devices``,
    ``output`` (+ ``resume``). ``extra_models`` names frozen companions (a KD teacher, a DPO
    reference) whose parameter counts are reported too. ``step_cap``: a step budget below
    ``steps_per_epoch * epochs`` (the RL recipes' ``num_steps``)."""
    summary: dict[str, Any] = {
        "model": _model_section(cfg, model, is_peft),
        "data": _data_section(loader, steps_per_epoch, epochs, accum, world_size, step_cap),
        "precision": _precision_section(cfg, model, dtype),
        "devices": _device_section(device, world_size),
        "output": {"checkpoint_dir": str(getattr(checkpointer, "output_dir", "") or "") or None},
    }
    for name, other in (extra_models or {}).items():
        summary["model"][name] = {"parameters": _numel(other.parameters())}
    if cfg.get("compile", False):
        summary["compile"] = {"what": _compile_scope(model)}
    if resumed_step is not None:
        total = summary["data"]["total_steps"]
        summary["resume"] = {
            "step": int(resumed_step),
            "epoch": int(resumed_step // steps_per_epoch) + 1,
            "total_steps": total,
        }
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The few lines printed before step 1 (one per section)."""
    m, d, p, dev, out = (summary[k] for k in ("model", "data", "precision", "devices", "output"))
    model = (
        f"model: {m['builder']}{_paren(m.get('family'))} | {m['parameters']:,} parameters, "
        f"{m['trainable_parameters']:,} trainable ({m['trainable_percent']:.2f}%) | "
        f"{m['method']}"
    )
    for name in ("teacher", "reference"):
        if name in m:
            model += f" | {name}: {m[name]['parameters']:,} parameters, frozen"
    rows = f"{d['rows']:,} rows"
    if d.get("skipped_rows"):
        rows += f" ({d['skipped_rows']:,} skipped: nothing to train on)"
    if d.get("packs") is not None:
        rows += f" in {d['packs']:,} packs of {d['pack_length']} tokens"
    tokens = "tokens not counted (tokenized as batches are drawn)"
    if d.get("tokens") is not None:
        tokens = f"{d['tokens']:,} tokens ({d['trained_tokens']:,} trained)"
    b = d["batch"]
    data = (
        f"data: {rows} | {tokens} | {d['steps_per_epoch']:,} steps/epoch x {d['epochs']} "
        f"epoch(s) = {d['total_steps']:,} steps{' (num_steps)' if d.get('capped') else ''} | "
        f"batch {b['per_device']} x accumulation "
        f"{b['accumulation']} x {b['world_size']} process(es) = {b['effective']} rows/step"
    )
    precision = f"precision: parameters {p['parameters']} | compute {p['compute']}"
    if p.get("loss_scaling"):
        precision += f" | loss scaling: {p['loss_scaling']}"
    if p.get("fake_quantization"):
        precision += f" | fake quantization: {p['fake_quantization']}"
    # the torch / CUDA builds are on the `runtime:` line every recipe logs first (log_runtime)
    n = dev["world_size"]
    devices = f"devices: {dev['device']} {dev.get('device_name') or ''}".rstrip()
    devices += f" x {n} process" + ("es (FSDP2)" if n > 1 else "")
    output = f"output: checkpoints -> {out['checkpoint_dir']}"
    if out.get("metrics_file"):
        output += f" | metrics -> {out['metrics_file']}"
    elif out.get("metrics"):
        output += f" | metrics -> {out['metrics']}"
    if out.get("log_file"):
        output += f" | log -> {out['log_file']}"
    if out.get("summary_file"):
        output += f" | this summary -> {out['summary_file']}"
    lines = [model, data, precision, devices, output]
    if "resume" in summary:
        r = summary["resume"]
        lines.append(
            f"resuming after step {r['step']:,} of {r['total_steps']:,} (epoch {r['epoch']})"
        )
    return lines


# ---------------------------------------------------------------------------------- sections
def _model_section(cfg: DictConfig, model: nn.Module, is_peft: bool) -> dict[str, Any]:
    node = cfg.model
    builder = str(node.get("base_component") or node.get("_component_", type(model).__name__))
    total = _numel(model.parameters())
    trainable = _numel(p for p in model.parameters() if p.requires_grad)
    section: dict[str, Any] = {
        "builder": builder,
        "family": _family(cfg),
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable_percent": 100.0 * trainable / max(total, 1),
    }
    if is_peft:
        from tunesmith.recipes._finetune_setup import adapter_config

        adapter = adapter_config(cfg)
        kind = "DoRA" if adapter["use_dora"] else "LoRA"
        if _has_nf4(model):
            kind = "QDoRA" if adapter["use_dora"] else "QLoRA"
        section["adapter"] = {"type": kind, **adapter}
        alpha = adapter["lora_alpha"]
        section["method"] = (
            f"{kind} rank {adapter['r']}, alpha {alpha:g} on {', '.join(adapter['target_modules'])}"
        )
    else:
        section["method"] = "full finetune (every parameter trains)"
    return section


def _family(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("checkpointer")
    family = ckpt.get("model_type") if ckpt is not None else None
    return None if family is None else str(family)


def _data_section(
    loader: DataLoader,
    steps_per_epoch: int,
    epochs: int,
    accum: int,
    world_size: int,
    step_cap: int | None = None,
) -> dict[str, Any]:
    parts = _leaf_datasets(loader.dataset)
    packed = [ds for ds in parts if getattr(ds, "packed", False) and hasattr(ds, "ds")]
    rows = sum(len(ds.ds) if ds in packed else len(ds) for ds in parts)
    skipped = [_skipped_rows(ds) for ds in parts]
    counts = [_token_counts(ds) for ds in parts]
    batch = int(loader.batch_size or 1)
    section: dict[str, Any] = {
        "rows": rows,
        "skipped_rows": None if all(n is None for n in skipped) else sum(n or 0 for n in skipped),
        "tokens": None,
        "trained_tokens": None,
        "packs": sum(len(ds) for ds in packed) if packed else None,
        "pack_length": packed[0].max_seq_len if packed else None,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "total_steps": min(steps_per_epoch * epochs, step_cap or steps_per_epoch * epochs),
        "capped": bool(step_cap) and step_cap < steps_per_epoch * epochs,
        "batch": {
            "per_device": batch,
            "accumulation": accum,
            "world_size": world_size,
            "effective": batch * accum * world_size,
        },
    }
    if counts and all(c is not None for c in counts):
        section["tokens"] = sum(c[0] for c in counts)  # type: ignore[index]
        section["trained_tokens"] = sum(c[1] for c in counts)  # type: ignore[index]
    return section


def _leaf_datasets(dataset: Any) -> list[Any]:
    if isinstance(dataset, ConcatDataset):
        return [leaf for ds in dataset.datasets for leaf in _leaf_datasets(ds)]
    inner = getattr(dataset, "_datasets", None)  # tunesmith.datasets.ConcatDataset
    if isinstance(inner, list | tuple) and inner:
        return [leaf for ds in inner for leaf in _leaf_datasets(ds)]
    return [dataset]


def _skipped_rows(dataset: Any) -> int | None:
    """``num_skipped_rows`` of the dataset, or of the one a packed dataset packs."""
    for ds in (dataset, getattr(dataset, "ds", None)):
        n = getattr(ds, "num_skipped_rows", None)
        if n is not None:
            return int(n)
    return None


def _token_counts(dataset: Any) -> tuple[int, int] | None:
    counts = getattr(dataset, "token_counts", None)
    if not callable(counts):
        return None
    got = counts()
    return None if got is None else (int(got[0]), int(got[1]))


def _precision_section(cfg: DictConfig, model: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    trainable: Counter[str] = Counter()
    frozen: Counter[str] = Counter()
    for p in model.parameters():
        (trainable if p.requires_grad else frozen)[_dtype_name(p)] += int(p.numel())
    if not frozen or not trainable or set(trainable) == set(frozen):
        params = " + ".join(name for name, _ in (trainable + frozen).most_common())
    else:  # most elements first: "frozen nf4 + fp32, trainable bf16"
        params = (
            f"frozen {' + '.join(n for n, _ in frozen.most_common())}, "
            f"trainable {' + '.join(n for n, _ in trainable.most_common())}"
        )
    section: dict[str, Any] = {"parameters": params, "compute": _short(dtype)}
    if dtype == torch.float16:
        section["loss_scaling"] = "none (fp16 without a loss scaler; bf16 is safer)"
    quantizer = cfg.get("quantizer")
    if quantizer is not None and str(cfg.model.get("_component_", "")).endswith("qat_model"):
        section["fake_quantization"] = str(quantizer.get("_component_", quantizer))
    return section


def _device_section(device: torch.device, world_size: int) -> dict[str, Any]:
    """``describe_runtime`` (device, GPU, torch / CUDA builds) + the number of processes."""
    from tunesmith.utils import describe_runtime

    return {**describe_runtime(device), "world_size": world_size}


# ------------------------------------------------------------------------------------ pieces
def _numel(params: Any) -> int:
    return sum(int(p.numel()) for p in params)  # DTensor (FSDP2): numel of the full tensor


def _is_nf4(p: torch.Tensor) -> bool:
    local = getattr(p.data, "_local_tensor", p.data)  # an FSDP2 shard holds the NF4 tensor
    return type(local).__name__ == "NF4Tensor"


def _has_nf4(model: nn.Module) -> bool:
    return any(_is_nf4(p) for p in model.parameters())


def _dtype_name(p: torch.Tensor) -> str:
    return "nf4" if _is_nf4(p) else _short(p.dtype)


def _short(dtype: torch.dtype) -> str:
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def _compile_scope(model: nn.Module) -> str:
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList | nn.ModuleDict | nn.Sequential):
        return f"each of the {len(layers)} layers + the loss"
    return "the whole model + the loss"


def _paren(text: str | None) -> str:
    return f" ({text})" if text else ""
