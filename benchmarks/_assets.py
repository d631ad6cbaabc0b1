"""Benchmark inputs shared by every system: peer venv, tokenizer, models, data.

Everything is built locally under the work folder (default ``~/.cache/tunesmith-bench``)
and reused when present:

* ``peer-venv/``: torch 2.13.0 (CPU, pinned first so pip never pulls CUDA), torchtune 0.6.1,
  torchao 0.15.0 (the last torchao torchtune 0.6.1 imports), transformers 5.23.0, peft 0.18.1;
* ``models/<size>/``: a random-init Llama-style model written by ``transformers``
  (``save_pretrained``), plus the toy tiktoken tokenizer and a ``special_tokens.json`` that
  places the 256 Llama 3 special tokens right after the BPE ranks (both torchtune's and
  tunesmith's ``llama3_tokenizer`` read it);
* ``data/alpaca.json``: synthetic alpaca-format rows with alpaca-like lengths.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY_TOKENIZER = REPO.parent / "shared" / "assets" / "torchtune_tests" / "tiktoken_small.model"
DEFAULT_WORK = Path(os.environ.get("TUNESMITH_BENCH_WORK", "~/.cache/tunesmith-bench")).expanduser()
PEER_PINS = [
    "torchtune==0.6.1",
    "torchao==0.15.0",
    "transformers==5.23.0",
    "peft==0.18.1",
    "safetensors",
    "tiktoken",
    "tokenizers",
    "psutil",
]

#: name -> (LlamaConfig fields, tie embeddings). ~15M, ~126M and SmolLM2-135M's architecture.
MODEL_SIZES: dict[str, dict] = {
    "15m": dict(
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=768,
        vocab_size=16384,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "120m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32768,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    # HuggingFaceTB/SmolLM2-135M config.json (random init; the toy tokenizer uses < 2.3k ids)
    "smollm2-135m": dict(
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
}

_NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
    "<|video|>",
]


# ------------------------------------------------------------------------------------ venv
def peer_python(work: Path, rebuild_ok: bool = True) -> Path:
    """Python of the peer venv (torchtune + transformers + peft), built when missing."""
    venv = work / "peer-venv"
    python = venv / "bin" / "python"
    probe = "import torchtune, transformers, peft, psutil"
    if (
        python.exists()
        and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    ):
        return python
    if not rebuild_ok:
        raise SystemExit(f"peer venv {venv} is missing or broken")
    print(f"== building the peer venv at {venv} (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pin = work / "pin.txt"
    pin.write_text("torch==2.13.0\n")
    pip = [str(python), "-m", "pip", "install", "-q"]
    cpu_index = ["--index-url", "https://download.pytorch.org/whl/cpu"]
    if subprocess.run(pip + cpu_index + ["torch==2.13.0"]).returncode != 0:
        subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["-c", str(pin)] + PEER_PINS, check=True)
    return python


# ------------------------------------------------------------------------------- tokenizer
def special_tokens(base_vocab: int, total: int = 256) -> dict[str, int]:
    """The Llama 3 special-token names at ids ``base_vocab ...``."""
    names = list(_NAMED_SPECIALS)
    i = 2
    while len(names) < total:
        names.append(f"<|reserved_special_token_{i}|>")
        i += 1
    return {name: base_vocab + k for k, name in enumerate(names)}


def write_tokenizer(model_dir: Path) -> None:
    """Copy the toy tiktoken file and write ``special_tokens.json`` (HF added_tokens layout)."""
    if not TOY_TOKENIZER.is_file():
        raise SystemExit(f"tokenizer asset {TOY_TOKENIZER} not found (../shared/assets)")
    shutil.copy(TOY_TOKENIZER, model_dir / "tokenizer.model")
    base = sum(1 for line in TOY_TOKENIZER.read_bytes().splitlines() if line.strip())
    specials = special_tokens(base)
    added = [{"id": i, "content": t, "special": True} for t, i in specials.items()]
    (model_dir / "special_tokens.json").write_text(json.dumps({"added_tokens": added}, indent=1))


# ---------------------------------------------------------------------------------- models
def make_model(work: Path, size: str) -> Path:
    """Random-init HF Llama model ``size`` in ``work/models/size`` (safetensors, fp32)."""
    out = work / "models" / size
    info_path = out / "bench_model_info.json"
    if info_path.is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out)
    specials = json.loads((out / "special_tokens.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in specials}
    fields = dict(MODEL_SIZES[size])
    if fields["vocab_size"] <= max(ids.values()):
        raise SystemExit(f"model {size}: vocab smaller than the tokenizer")
    cfg = LlamaConfig(
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        head_dim=fields["hidden_size"] // fields["num_attention_heads"],
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|end_of_text|>"],
        pad_token_id=ids["<|finetune_right_pad_id|>"],
        **fields,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config.setdefault("rope_theta", fields["rope_theta"])  # torchtune's checkpointer reads it
    config["head_dim"] = cfg.head_dim
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    n_all = sum(p.numel() for p in model.parameters())
    n_emb = model.model.embed_tokens.weight.numel()
    info = dict(size=size, params=n_all, params_nonembed=n_all - n_emb, **fields)
    info_path.write_text(json.dumps(info, indent=1))
    return out


# ------------------------------------------------------------------------------------ data
_WORDS = (
    "the of and to in is was for on that with as by at from his her they this have are be or "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more two like him "
    "see time could no make than first been its who now people my made over did down only way "
    "find use may water long little very after words called just where most know get through "
    "back much before go good new write our used me man too any day same right look think also "
    "around another came come work three word must because does part even place well such here "
    "take why things help put years different away again off went old number great tell men "
    "model training data gradient tensor layer memory token batch optimizer loss python function "
    "value result system process network energy science music history city river mountain"
).split()
_VERBS = "Explain Describe Summarize List Write Compare Translate Classify Rewrite Suggest".split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def _paragraph(rng: random.Random, n_words: int) -> str:
    out, total = [], 0
    while total < n_words:
        s = _sentence(rng, 5, 18)
        out.append(s)
        total += s.count(" ") + 1
    return " ".join(out)


def make_alpaca(path: Path, rows: int, seed: int = 0) -> Path:
    """Synthetic alpaca rows: half with an input, outputs log-normal in length (15..420 words)."""
    if path.is_file():
        return path
    rng = random.Random(seed)
    data = []
    for _ in range(rows):
        instruction = f"{rng.choice(_VERBS)} " + _sentence(rng, 6, 20)
        extra = _paragraph(rng, rng.randint(10, 60)) if rng.random() < 0.5 else ""
        n_out = int(min(420, max(15, rng.lognormvariate(4.4, 0.6))))
        data.append({"instruction": instruction, "input": extra, "output": _paragraph(rng, n_out)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)
    return path
