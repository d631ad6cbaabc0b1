"""Recipe ``eval`` (torchtune alias ``eleuther_eval``): EleutherAI lm-eval on a tunesmith model.

Config keys (torchtune's eleuther_evaluation names)::

    model, tokenizer, checkpointer   components, as in the generation configs (any checkpoint
                                     format; LoRA outputs; a quantized folder through
                                     tunesmith.quantization.load_quantized_model +
                                     QuantizedCheckpointer)
    device, dtype, seed
    tasks            list of lm-eval task (or group) names
    include_path     folder (or list) of local task YAMLs, added to lm-eval's task index
    limit            at most this many documents per task (a fraction when < 1)
    num_fewshot      few-shot examples (default: each task's own)
    batch_size       sequences per forward (default 8)
    max_seq_length   longest scored input (default: the model's max_seq_len)
    add_bos_token    null (BOS like a Hugging Face tokenizer would add) | true | false
    apply_chat_template, fewshot_as_multiturn, system_instruction   lm-eval's chat options
                     (the prompt is formatted by the tokenizer's chat template / format)
    enable_kv_cache  KV cache for generation tasks (default true)
    quantizer        optional: quantize the loaded float model before evaluating

With a vision model transform as tokenizer (``llama3_2_vision_transform``) the model runs
lm-eval's multimodal path (``TunesmithVLM``): image+text ``generate_until`` tasks such as
``mmmu_val_science``, or a local task YAML with ``doc_to_image``.
    output_dir       optional: results.json is written there
    log_samples      also keep each document's responses (results.json "samples")

Needs ``pip install 'tunesmith[eval]'``. Run:
``tunesmith run eval --config eval/llama3_2_1b tasks=[hellaswag] limit=100``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tunesmith.config import ConfigError, instantiate
from tunesmith.utils import (
    atomic_write_bytes,
    get_device,
    get_dtype,
    get_logger,
    log_runtime,
    require,
    set_seed,
)

__all__ = ["recipe_main", "run_evaluation"]

log = get_logger(__name__)


def _as_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value]
    raise ConfigError(f"{key}: expected a name or a list of names, got {value!r}", key=key)


def run_evaluation(lm: Any, cfg: DictConfig) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``lm`` on ``cfg.tasks``; returns lm-eval's results."""
    lm_eval = require("lm_eval", "eval")
    from lm_eval.tasks import TaskManager

    tasks = _as_list(cfg.get("tasks"), "tasks")
    if not tasks:
        raise ConfigError(
            "tasks: name at least one lm-eval task, e.g. tasks: [hellaswag]", key="tasks"
        )
    include = _as_list(cfg.get("include_path"), "include_path")
    for folder in include:
        if not Path(folder).exists():
            raise ConfigError(f"include_path: {folder!r} does not exist", key="include_path")
    manager = TaskManager(include_path=include or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hint = " (add include_path for local task YAMLs)" if not include else ""
        raise ConfigError(
            f"tasks: unknown lm-eval task(s) {unknown}{hint}; `lm_eval --tasks list` shows them",
            key="tasks",
        )
    chat: dict[str, Any] = {}
    if cfg.get("apply_chat_template"):
        chat["apply_chat_template"] = True
        chat["fewshot_as_multiturn"] = bool(cfg.get("fewshot_as_multiturn", True))
    if cfg.get("system_instruction"):
        chat["system_instruction"] = str(cfg.system_instruction)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=cfg.get("num_fewshot"),
        limit=cfg.get("limit"),
        task_manager=manager,
        log_samples=bool(cfg.get("log_samples", False)),
        random_seed=int(cfg.get("seed") or 0),
        numpy_random_seed=int(cfg.get("seed") or 1234),
        torch_random_seed=int(cfg.get("seed") or 1234),
        fewshot_random_seed=int(cfg.get("seed") or 1234),
        **chat,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return results


def recipe_main(cfg: DictConfig) -> None:
    """Evaluate ``cfg.model`` on ``cfg.tasks`` and print lm-eval's results table."""
    require("lm_eval", "eval")
    from lm_eval.utils import make_table

    from tunesmith.evaluation import TunesmithLM
    from tunesmith.recipes.generate import load_model

    device = get_device(cfg.get("device"))
    dtype = get_dtype(cfg.get("dtype"), device)
    log_runtime(device, 0)
    set_seed(cfg.get("seed"))
    if cfg.get("output_dir"):  # an earlier run's results stay unless overwrite=True
        from tunesmith.training.checkpointing import preflight_files

        preflight_files(
            cfg.output_dir, ["results.json"], overwrite=bool(cfg.get("overwrite", False))
        )
    model, _ = load_model(cfg, device, dtype)
    if cfg.get("quantizer") is not None:
        quantizer = instantiate(cfg.quantizer)
        model = quantizer.quantize(model)
        log.info("evaluating the model quantized with %s", type(quantizer).__name__)
    tokenizer = instantiate(cfg.tokenizer)
    options = dict(
        device=device,
        max_seq_length=cfg.get("max_seq_length"),
        batch_size=int(cfg.get("batch_size", 8)),
        add_bos_token=cfg.get("add_bos_token"),
        enable_kv_cache=bool(cfg.get("enable_kv_cache", True)),
    )
    if hasattr(tokenizer, "image_transform"):  # a vision model transform: multimodal tasks
        from tunesmith.evaluation import TunesmithVLM

        if cfg.get("apply_chat_template"):
            raise ConfigError(
                "apply_chat_template: a vision model's prompts are always formatted by its "
                "transform's chat format; remove apply_chat_template",
                key="apply_chat_template",
            )
        lm = TunesmithVLM(model, tokenizer, **options)
    else:
        lm = TunesmithLM(model, tokenizer, **options)
    start = time.perf_counter()
    results = run_evaluation(lm, cfg)
    log.info("evaluation took %.1f s", time.perf_counter() - start)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if cfg.get("output_dir"):
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        keep = {k: results[k] for k in ("results", "groups", "versions", "n-shot") if k in results}
        if cfg.get("log_samples") and results.get("samples"):  # each document's responses
            keep["samples"] = {
                task: [
                    {k: row[k] for k in ("doc_id", "target", "resps", "filtered_resps") if k in row}
                    for row in rows
                ]
                for task, rows in results["samples"].items()
            }
        keep["config"] = OmegaConf.to_container(cfg, resolve=True)
        atomic_write_bytes(out / "results.json", json.dumps(keep, indent=2, default=str).encode())
        log.info("wrote %s", out / "results.json")


if __name__ == "__main__":  # python eval.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "eval"))
