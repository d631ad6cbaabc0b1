"""Inputs of the GPU benchmark: packages (local wheels first), the model, tokenizer, configs.

* Packages: the GPU machine's own torch (CUDA) is used as it is; what tunesmith and
  torchtune 0.6.1 need beyond it and is missing there (torchtune, torchao, datasets,
  omegaconf, gguf, ...) is installed with ``pip --no-index --find-links
  benchmarks/gpu/wheels --target <work>/site`` (``make bench-gpu-wheels`` downloads those
  wheels on a networked machine; see ``WHEELS``). Nothing is installed into the
  interpreter's own environment.
* Model: a random-init Hugging Face Llama with Llama-3.2-1B's shape (bf16, built on the
  benchmark device by ``transformers``), or a tiny one (``--tiny``).
* Tokenizer: a byte-level tiktoken file (the 256 byte values as ranks) plus the 256 Llama 3
  special tokens right after them (``special_tokens.json``), read by both systems'
  ``llama3_tokenizer``: no tokenizer download, and every alpaca row is 1-2.5k tokens.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _assets import special_tokens  # noqa: E402

REPO = HERE.parents[1]
WHEELS = HERE / "wheels"

#: (distribution pin for ``make bench-gpu-wheels``, module to import). Pure-Python except
#: torchao (abi3) and xxhash; torch, numpy, pyarrow, pandas, transformers, tokenizers, tiktoken,
#: sentencepiece, safetensors, huggingface_hub, psutil, PyYAML, jinja2 come from the machine.
PACKAGES: list[tuple[str, str]] = [
    ("torchtune==0.6.1", "torchtune"),
    # the newest torchao torchtune 0.6.1 imports (0.16 moved NF4); tunesmith takes >= 0.10
    ("torchao==0.15.0", "torchao.dtypes.nf4tensor"),
    ("torchdata==0.11.0", "torchdata"),
    ("datasets==5.2.0", "datasets"),
    ("dill==0.4.1", "dill"),
    ("multiprocess==0.70.19", "multiprocess"),
    ("xxhash==4.1.0", "xxhash"),
    ("omegaconf==2.4.0", "omegaconf"),
    ("gguf==0.19.0", "gguf"),
    ("blobfile==3.3.0", "blobfile"),
    ("pycryptodomex==3.24.2", "Cryptodome"),
    ("kagglehub==0.3.13", "kagglehub"),  # 1.x needs kagglesdk
    ("tiktoken==0.14.0", "tiktoken"),
    ("sentencepiece==0.2.3", "sentencepiece"),
    ("safetensors==0.8.0", "safetensors"),
    ("jinja2==3.1.6", "jinja2"),
    ("markupsafe==3.0.3", "markupsafe"),
]

#: Llama-3.2-1B's config.json (meta-llama/Llama-3.2-1B), weights random.
LLAMA_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=128256,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    max_position_embeddings=131072,
    rope_scaling={
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
)
TINY = dict(
    LLAMA_1B,
    hidden_size=256,  # every projection a multiple of 16384 elements: torchao NF4 blocks
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
    vocab_size=512,
)
BYTES = 256  # byte-level ranks; specials at 256..511


# -------------------------------------------------------------------------------- packages
def child_env(site: Path) -> dict[str, str]:
    """Environment of every child process: tunesmith from ``src``, wheels from ``site``."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    paths = [str(REPO / "src"), str(site)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def missing_modules(python: str, env: dict[str, str]) -> list[str]:
    """Modules of ``PACKAGES`` that ``python`` cannot find (a dotted name: nor its parents)."""
    names = [m for _, m in PACKAGES]
    code = (
        "import importlib.util, json\n"
        "def gone(m):\n"
        "    try:\n"
        "        return importlib.util.find_spec(m) is None\n"
        "    except Exception:\n"
        "        return True\n"
        f"print(json.dumps([m for m in {names!r} if gone(m)]))"
    )
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else names


def ensure_packages(python: str, site: Path, wheels: Path, log, allow_index: bool = False) -> dict:
    """Install what is missing into ``site`` from ``wheels`` (no network); from the package
    index only with ``allow_index`` and where ``wheels`` holds none."""
    site.mkdir(parents=True, exist_ok=True)
    env = child_env(site)
    missing = missing_modules(python, env)
    info: dict = {"missing_before": missing, "installed": [], "source": None}
    if not missing:
        return info
    dists = [d for d, m in PACKAGES if m in missing]
    pip = [
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-compile",
        "--target",
        str(site),
        "--upgrade",
    ]
    have = sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    if have:
        log(f"installing {', '.join(dists)} from {wheels} (no network)")
        cmd = pip + ["--no-index", "--find-links", str(wheels), *dists]
        info["source"] = str(wheels)
    elif allow_index:
        log(f"no wheels in {wheels}: installing {', '.join(dists)} from the package index")
        cmd = pip + dists
        info["source"] = "index"
    else:
        log(f"missing {', '.join(missing)} and no wheels in {wheels} (make bench-gpu-wheels)")
        info["missing_after"] = missing
        return info
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:  # one by one, so one absent wheel does not block the rest
        for d in dists:
            one = subprocess.run([*cmd[: cmd.index(dists[0])], d], capture_output=True, text=True)
            if one.returncode != 0:
                info.setdefault("failed", []).append(d)
    info["installed"] = [d for d in dists if d not in info.get("failed", [])]
    info["missing_after"] = missing_modules(python, env)
    return info


def probe_systems(python: str, env: dict[str, str]) -> dict:
    """Versions, and why a system cannot run (``None`` when it can)."""
    code = r"""
import json, traceback
out = {}
for name, stmt in (
    ("tunesmith", "import tunesmith.recipes.finetune"),
    ("torchtune", "import torchtune; from torchtune.models.llama3_2 import lora_llama3_2; "
                  "from torchtune.training import FullModelHFCheckpointer"),
):
    try:
        exec(stmt)
        out[name] = None
    except BaseException as e:
        out[name] = f"{type(e).__name__}: {e}"[:300]
import importlib.metadata as md
for dist in ("torchtune", "torchao", "transformers", "datasets", "torch"):
    try:
        out[dist + "_version"] = md.version(dist)
    except Exception:
        out[dist + "_version"] = None
print(json.dumps(out))
"""
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"tunesmith": out.stderr[-300:], "torchtune": out.stderr[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ model, tokenizer
def write_byte_tokenizer(model_dir: Path) -> dict[str, int]:
    """``tokenizer.model`` (256 byte ranks) + ``special_tokens.json``; returns the specials."""
    lines = [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(BYTES)]
    (model_dir / "tokenizer.model").write_text("\n".join(lines) + "\n")
    specials = special_tokens(BYTES)
    added = [{"id": i, "content": t, "special": True} for t, i in specials.items()]
    (model_dir / "special_tokens.json").write_text(json.dumps({"added_tokens": added}))
    return specials


def build_model(model_dir: Path, fields: dict, device: str) -> Path:
    """Random-init HF Llama with ``fields`` in ``model_dir`` (bf16 safetensors); reused."""
    info = model_dir / "bench_model_info.json"
    if info.is_file() and json.loads(info.read_text()).get("fields") == fields:
        return model_dir
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir.mkdir(parents=True, exist_ok=True)
    ids = write_byte_tokenizer(model_dir)
    cfg = LlamaConfig(
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
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    config = json.loads((model_dir / "config.json").read_text())
    config.setdefault("rope_theta", fields["rope_theta"])  # torchtune's checkpointer reads it
    config["head_dim"] = cfg.head_dim
    config["torch_dtype"] = "bfloat16"
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    n = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    info.write_text(json.dumps({"fields": fields, "params": n}))
    return model_dir


def checkpoint_files(model_dir: Path) -> list[str]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return ["model.safetensors"]


# --------------------------------------------------------------------------------- configs
def lora_args(method: str, tiny: bool) -> dict:
    """torchtune's llama3_2/1B_lora_single_device adapter settings (rank 8 when tiny)."""
    if method == "full":
        return {}
    out = {
        "lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
        "apply_lora_to_mlp": True,
        "apply_lora_to_output": False,
        "lora_rank": 8 if tiny else 64,
        "lora_alpha": 16 if tiny else 128,
        "lora_dropout": 0.0,
    }
    if method == "qlora":
        out["quantize_base"] = True
    if method == "dora":
        out["use_dora"] = True
    return out


def config(
    system: str,
    w,  # run_gpu.GpuWorkload
    run_dir: Path,
    model_dir: Path,
    data: Path,
    device: str,
    fields: dict,
) -> str:
    """The YAML one system trains ``w`` with; both share everything but the model/loss."""
    ns = system
    model: dict = {}
    if system == "tunesmith":
        model = {
            "_component_": "tunesmith.models.build_from_hf",
            "checkpoint_dir_or_config": str(model_dir),
            **lora_args(w.method, w.tiny),
        }
        loss = {"_component_": "tunesmith.modules.loss.LinearCrossEntropyLoss"}
    else:
        prefix = "" if w.method == "full" else "lora_"
        model = {
            "_component_": f"torchtune.models.llama3_2.{prefix}llama3_2",
            "vocab_size": fields["vocab_size"],
            "num_layers": fields["num_hidden_layers"],
            "num_heads": fields["num_attention_heads"],
            "num_kv_heads": fields["num_key_value_heads"],
            "embed_dim": fields["hidden_size"],
            "intermediate_dim": fields["intermediate_size"],
            "max_seq_len": fields["max_position_embeddings"],
            "rope_base": int(fields["rope_theta"]),
            "norm_eps": 1e-5,
            "scale_factor": int(fields["rope_scaling"]["factor"]),
            "tie_word_embeddings": True,
            **lora_args(w.method, w.tiny),
        }
        loss = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    cfg: dict = {
        "output_dir": str(run_dir / "out"),
        "model": model,
        "tokenizer": {
            "_component_": f"{ns}.models.llama3.llama3_tokenizer",
            "path": str(model_dir / "tokenizer.model"),
            "special_tokens_path": str(model_dir / "special_tokens.json"),
            "max_seq_len": w.seq_len,
        },
        "checkpointer": {
            "_component_": f"{ns}.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir),
            "checkpoint_files": checkpoint_files(model_dir),
            "recipe_checkpoint": None,
            "output_dir": str(run_dir / "out"),
            "model_type": "LLAMA3_2",
        },
        "resume_from_checkpoint": False,
        "dataset": {
            "_component_": f"{ns}.datasets.alpaca_dataset",
            "source": "json",
            "data_files": str(data),
            "split": "train",
            "train_on_input": True,
            "packed": w.packed,
        },
        "seed": 0,
        "shuffle": False,
        "batch_size": w.batch_size,
        "epochs": 1,
        "max_steps_per_epoch": w.steps + 1,  # _launch.py stops at the pre-step hook of N + 1
        "gradient_accumulation_steps": 1,
        "clip_grad_norm": None,
        "optimizer_in_bwd": False,
        "optimizer": {
            "_component_": "torch.optim.AdamW",
            "lr": 2e-5 if w.method == "full" else 3e-4,
            "weight_decay": 0.01,
        },
        "loss": loss,
        "compile": w.compile,
        "device": device,
        "dtype": "bf16",
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "metric_logger": {
            "_component_": f"{ns}.training.metric_logging.DiskLogger",
            "log_dir": str(run_dir / "logs"),
        },
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,  # _launch.py measures both the same way
        "profiler": {"_component_": f"{ns}.training.setup_torch_profiler", "enabled": False},
    }
    if w.method != "full":
        cfg["lr_scheduler"] = {
            "_component_": f"{ns}.training.lr_schedulers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": 0,
        }
        cfg["save_adapter_weights_only"] = True
    return yaml.safe_dump(cfg, sort_keys=False)
