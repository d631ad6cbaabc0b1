"""Error-table cases for checkpoints and output folders (issue 12).

Every case runs ``tunesmith run finetune`` on a tiny random Llama (HF folder with a
byte-level BPE tokenizer.json) and a valid instruct data file, so the only fault is the
one the case plants. The base model is built once per process and copied per case.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tests.error_cases._case import ErrorCase

_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
_CACHE: dict[str, Path] = {}


def _base_model() -> Path:
    """A tiny Llama + tokenizer.json + tokenizer_config.json, built once per process."""
    if "base" in _CACHE:
        return _CACHE["base"]
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(tempfile.mkdtemp(prefix="tunesmith-errcase-"))
    atexit.register(shutil.rmtree, root, True)
    folder = root / "model"
    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["reverse and shout the word apple river stone"] * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    _CACHE["base"] = folder
    return folder


def _setup(tmp: Path, **over: Any) -> Path:
    """Copy the base model to ``tmp/model``, write data and ``tmp/cfg.yaml``; ``over`` sets
    dotted keys (``None`` deletes one)."""
    import yaml

    model = tmp / "model"
    if not model.exists():
        shutil.copytree(_base_model(), model)
    rows = [{"instruction": "Reverse.", "input": w, "output": w[::-1]} for w in ["apple"] * 16]
    (tmp / "data.json").write_text(json.dumps(rows))
    cfg: dict[str, Any] = {
        "output_dir": str(tmp / "out"),
        "model": {"_component_": "tunesmith.models.build_from_hf",
                  "checkpoint_dir_or_config": str(model)},
        "tokenizer": {"_component_": "tunesmith.data.tokenizers.HuggingFaceModelTokenizer",
                      "tokenizer_json_path": str(model / "tokenizer.json"),
                      "tokenizer_config_json_path": str(model / "tokenizer_config.json"),
                      "chat_template": _TEMPLATE, "max_seq_len": 64},
        "checkpointer": {"_component_": "tunesmith.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(model), "checkpoint_files": ["model.safetensors"],
                         "output_dir": "${output_dir}", "model_type": "LLAMA3"},
        "resume_from_checkpoint": False,
        "dataset": {"_component_": "tunesmith.datasets.instruct_dataset", "source": "json",
                    "data_files": str(tmp / "data.json"), "split": "train"},
        "seed": 0, "batch_size": 2, "epochs": 1, "max_steps_per_epoch": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "loss": {"_component_": "tunesmith.modules.loss.LinearCrossEntropyLoss"},
        "device": "cpu", "dtype": "fp32",
        "metric_logger": {"_component_": "tunesmith.training.metric_logging.DiskLogger",
                          "log_dir": "${output_dir}/logs"},
    }  # fmt: skip
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _args(cfg: Path, *extra: str) -> list[str]:
    return ["run", "finetune", "--config", str(cfg), *extra]


def _earlier_run(tmp: Path, *, intermediate: bool = True, lora_rank: int | None = None) -> Path:
    """Write ``tmp/out/step_1`` as an earlier run of this config would (weights, recipe
    state, marker) without training: the checkpointer's own save."""
    import torch

    from tunesmith.training import FullModelHFCheckpointer, build_recipe_state

    ckpt = FullModelHFCheckpointer(tmp / "model", ["model.safetensors"], "LLAMA3", tmp / "out")
    state = ckpt.load_checkpoint()
    sd: dict[str, Any] = {"model": state["model"]}
    if lora_rank is not None:
        q = state["model"]["layers.0.attn.q_proj.weight"]
        sd["adapter"] = {
            "layers.0.attn.q_proj.lora_a.weight": torch.randn(lora_rank, q.shape[1]),
            "layers.0.attn.q_proj.lora_b.weight": torch.zeros(q.shape[0], lora_rank),
        }
        sd["adapter_config"] = {"r": lora_rank, "lora_alpha": 2.0 * lora_rank}
    if intermediate:
        sd.update(build_recipe_state(epochs_run=0, steps_run=1, seed=0))
    return ckpt.save_checkpoint(
        sd, epoch=0, step=1 if intermediate else None, intermediate_checkpoint=intermediate,
        adapter_only=lora_rank is not None,
    )  # fmt: skip


def _zero_page(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\0" * 4096)


def _drop_file_lists(out: Path) -> None:
    """Markers as older tunesmith wrote them (no file list to verify against)."""
    for marker in out.glob("*/.complete"):
        data = json.loads(marker.read_text())
        data.pop("files", None)
        marker.write_text(json.dumps(data))


# ----------------------------------------------------------------------------------- builders
def _router_loss_on_dense_model(tmp: Path) -> list[str]:
    return _args(_setup(tmp), "router_aux_loss_coef=0.01")


def _quantized_checkpoint(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    config_file = tmp / "model" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    config_file.write_text(json.dumps(config))
    return _args(cfg)


def _hybrid_granite4_checkpoint(tmp: Path) -> list[str]:
    """A Granite 4.0 H config (granitemoehybrid with Mamba-2 layers) beside the weights."""
    cfg = _setup(tmp)
    config_file = tmp / "model" / "config.json"
    config = json.loads(config_file.read_text())
    n = config["num_hidden_layers"]
    config |= {"model_type": "granitemoehybrid", "architectures": ["GraniteMoeHybridForCausalLM"],
               "layer_types": ["mamba"] * (n - 1) + ["attention"], "num_local_experts": 0}  # fmt: skip
    config_file.write_text(json.dumps(config))
    return _args(cfg)


def _missing_checkpoint_dir(tmp: Path) -> list[str]:
    return _args(_setup(tmp, **{"checkpointer.checkpoint_dir": str(tmp / "nowhere")}))


def _missing_checkpoint_file(tmp: Path) -> list[str]:
    cfg = _setup(tmp, **{"checkpointer.checkpoint_files": ["model-00001-of-00002.safetensors"]})
    return _args(cfg)


def _truncated_weights(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    weights = tmp / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    return _args(cfg)


def _garbage_weights_header(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    weights = tmp / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header no longer parses
    weights.write_bytes(bytes(data))
    return _args(cfg)


def _zeroed_own_checkpoint(tmp: Path) -> list[str]:
    _setup(tmp)
    folder = _earlier_run(tmp, intermediate=False)
    start = tmp / "start"
    shutil.move(str(folder), start)  # a finished run's folder used as the next run's base
    _zero_page(start / "model.safetensors")
    return _args(_setup(tmp, **{"checkpointer.checkpoint_dir": str(start)}))


def _manifest(tmp: Path, bump_size: bool = False) -> None:
    import hashlib

    files = {}
    for p in (tmp / "model").iterdir():
        files[p.name] = {
            "size": p.stat().st_size + (bump_size and p.name == "model.safetensors"),
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
    (tmp / "model" / ".tunesmith-manifest.json").write_text(json.dumps({"files": files}))


def _zeroed_downloaded_weights(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    _manifest(tmp)
    _zero_page(tmp / "model" / "model.safetensors")
    return _args(cfg)


def _downloaded_size_mismatch(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    _manifest(tmp, bump_size=True)
    return _args(cfg)


def _previous_run(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    _earlier_run(tmp)
    return _args(cfg)


def _output_dir_is_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("a file, not a folder\n")
    return _args(_setup(tmp, output_dir=str(tmp / "taken" / "out")))


def _log_dir_is_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("a file, not a folder\n")
    return _args(_setup(tmp, **{"metric_logger.log_dir": str(tmp / "taken" / "logs")}))


def _all_checkpoints_damaged(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    folder = _earlier_run(tmp)
    _zero_page(folder / "model.safetensors")
    return _args(cfg, "resume_from_checkpoint=True")


def _garbage_recipe_state(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    folder = _earlier_run(tmp)
    _drop_file_lists(tmp / "out")
    (folder / "recipe_state.pt").write_bytes(b"\x80\x04garbage, not a torch file" * 100)
    return _args(cfg, "resume_from_checkpoint=True")


def _resume_a_finished_run(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    _earlier_run(tmp, intermediate=False)
    return _args(cfg, "resume_from_checkpoint=True")


def _resume_nothing(tmp: Path) -> list[str]:
    return _args(_setup(tmp), "resume_from_checkpoint=True")


def _resume_and_overwrite(tmp: Path) -> list[str]:
    cfg = _setup(tmp)
    _earlier_run(tmp)
    return _args(cfg, "resume_from_checkpoint=True", "overwrite=True")


_LORA = {
    "model.lora_attn_modules": ["q_proj"],
    "model.lora_rank": 8,
    "model.lora_alpha": 16,
}


def _adapter_of_another_rank(tmp: Path) -> list[str]:
    _setup(tmp)
    folder = _earlier_run(tmp, intermediate=False, lora_rank=4)
    adapter = tmp / "adapter_r4"
    shutil.move(str(folder), adapter)
    shutil.rmtree(tmp / "out")
    return _args(_setup(tmp, **_LORA, **{"checkpointer.adapter_checkpoint": str(adapter)}))


def _adapter_checkpoint_nowhere(tmp: Path) -> list[str]:
    over = {**_LORA, "checkpointer.adapter_checkpoint": str(tmp / "no_adapter")}
    return _args(_setup(tmp, **over))


def _weights_of_another_model(tmp: Path) -> list[str]:
    """config.json describes a wider model than the weights (the builder reads it)."""
    cfg = _setup(tmp)
    config_path = tmp / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 256
    other = tmp / "other_config"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    return _args(cfg, f"model.checkpoint_dir_or_config={other}")


CASES: list[ErrorCase] = [
    ErrorCase("router loss coefficient for a dense model", "config", _router_loss_on_dense_model,
              r"router_aux_loss_coef=0\.01: the model has no mixture-of-experts layers"),
    ErrorCase("quantized (MXFP4) checkpoint", "checkpoint", _quantized_checkpoint,
              r"checkpoint is quantized \(mxfp4\).*bf16"),
    ErrorCase("hybrid Mamba-2 Granite 4.0 checkpoint", "checkpoint", _hybrid_granite4_checkpoint,
              r"granitemoehybrid \(GraniteMoeHybridForCausalLM\) with \d+ Mamba-2 layers"),
    ErrorCase("checkpoint folder missing", "checkpoint", _missing_checkpoint_dir,
              r"checkpoint folder does not exist \(checkpointer\.checkpoint_dir=.*nowhere\)"),
    ErrorCase("checkpoint file missing", "checkpoint", _missing_checkpoint_file,
              r"checkpoint file 'model-00001-of-00002\.safetensors' does not exist.*"
              r"model\.safetensors"),
    ErrorCase("truncated weights", "checkpoint", _truncated_weights,
              r"safetensors file is truncated: \d+ bytes, its header needs \d+ "
              r"\(.*model\.safetensors\)"),
    ErrorCase("weights header unreadable", "checkpoint", _garbage_weights_header,
              r"safetensors header .*model\.safetensors"),
    ErrorCase("zeroed bytes in a tunesmith checkpoint", "checkpoint", _zeroed_own_checkpoint,
              r"checkpoint file is damaged: model\.safetensors does not match its recorded"),
    ErrorCase("zeroed bytes in downloaded weights", "checkpoint", _zeroed_downloaded_weights,
              r"does not match the sha256 the hub reported \(.*model\.safetensors\)"),
    ErrorCase("downloaded file of the wrong size", "checkpoint", _downloaded_size_mismatch,
              r"file is \d+ bytes but the hub reported \d+ \(.*model\.safetensors\)"),
    ErrorCase("output_dir holds an earlier run", "checkpoint", _previous_run,
              r"output_dir already holds checkpoints of an earlier run .*step_1.*"
              r"resume_from_checkpoint=True.*overwrite=True"),
    ErrorCase("output_dir not writable", "checkpoint", _output_dir_is_a_file,
              r"output folder is not writable.*checkpointer\.output_dir=.*taken"),
    ErrorCase("log dir not writable", "checkpoint", _log_dir_is_a_file,
              r"output folder is not writable.*metric_logger\.log_dir=.*taken"),
    ErrorCase("every checkpoint damaged on resume", "checkpoint", _all_checkpoints_damaged,
              r"no intact checkpoint to resume from .*step_1 is damaged: model\.safetensors"),
    ErrorCase("garbage recipe_state.pt", "checkpoint", _garbage_recipe_state,
              r"cannot read recipe_state\.pt.*resume from an earlier checkpoint or start fresh"),
    ErrorCase("resume a finished run", "checkpoint", _resume_a_finished_run,
              r"end-of-training save.*training already finished"),
    ErrorCase("resume with nothing to resume", "checkpoint", _resume_nothing,
              r"nothing to resume: no complete checkpoint in output_dir"),
    ErrorCase("resume together with overwrite", "checkpoint", _resume_and_overwrite,
              r"overwrite=True and resume_from_checkpoint=True contradict"),
    ErrorCase("adapter of another LoRA rank", "checkpoint", _adapter_of_another_rank,
              r"the adapter has LoRA rank 4 but the model is built with rank 8", watch="out"),
    ErrorCase("adapter_checkpoint points nowhere", "checkpoint", _adapter_checkpoint_nowhere,
              r"adapter checkpoint does not exist \(checkpointer\.adapter_checkpoint=.*no_adapter"),
    ErrorCase("weights of another model size", "checkpoint", _weights_of_another_model,
              r"checkpoint tensor\(s\) do not fit the model, e\.g\. layers\.0\.mlp|config\.json"),
]  # fmt: skip
