"""Recipe ``quantize``: post-training quantization of a (finetuned) model, or GGUF export.

Config keys (torchtune's quantization config names)::

    model, checkpointer     components, as in the finetune configs (any checkpoint format)
    device, dtype, seed
    quantizer               a tunesmith.quantization quantizer (torchtune's
                            torchtune.training.quantization.* names), e.g.
                            Int8DynActInt4WeightQuantizer(groupsize=256), Int4WeightOnlyQuantizer,
                            Int8WeightOnlyQuantizer, or a QAT quantizer (prepare + convert of a
                            model trained with the qat recipe)
    output_dir              where model-<mode>.pt + quantization.json are written
    output_format           torchao (default) | gguf
    gguf_type               f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1
                            (output_format: gguf; default q8_0; k-quants: see
                            tunesmith.models.gguf_export.llama_cpp_quantize)
    tokenizer_dir           gguf: folder with tokenizer.json or a SentencePiece
                            tokenizer.model (+ tokenizer_config.json /
                            chat_template.jinja); default checkpointer.checkpoint_dir

Run: ``tunesmith run quantize --config quantize/llama3_2_1b_8da4w`` (torchao) or
``tunesmith run quantize --config quantize/llama3_2_1b_gguf`` (a llama.cpp file).
Load the torchao result with :func:`tunesmith.quantization.load_quantized_model`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunesmith.config import ConfigError, instantiate
from tunesmith.utils import get_device, get_dtype, get_logger, log_runtime, set_seed

__all__ = ["recipe_main", "self_contained_model_config"]

log = get_logger(__name__)


def _load_float_model(
    cfg: DictConfig, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, Any, dict[str, torch.Tensor]]:
    """``(model, checkpointer, native state dict)``; LoRA checkpoints must be merged outputs."""
    from tunesmith.training.meta_init import load_full_state_dict
    from tunesmith.training.precision import set_default_dtype

    checkpointer = instantiate(cfg.checkpointer)
    state = checkpointer.load_checkpoint()["model"]
    # built on meta in the target dtype, then filled: never an fp32 copy on the device
    with set_default_dtype(dtype), torch.device("meta"):
        model = instantiate(cfg.model)
    missing, unexpected = load_full_state_dict(model, state, device, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not fit model._component_={cfg.model.get('_component_')}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}. Quantize the merged output "
            "of a LoRA finetune with the plain (non-LoRA) model builder."
        )
    return model.eval(), checkpointer, state


def self_contained_model_config(cfg: DictConfig, checkpointer: Any) -> dict[str, Any]:
    """``cfg.model`` as plain data that rebuilds the model without the input folder: a
    ``build_from_hf`` model gets the checkpoint's ``config.json`` inline."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(node, dict)
    component = str(node.get("_component_", ""))
    hf_config = getattr(checkpointer, "hf_config", None)
    if component.endswith("build_from_hf") and hf_config is not None:
        node["checkpoint_dir_or_config"] = dict(hf_config)
    return node


def _export_gguf(cfg: DictConfig, checkpointer: Any, state: dict[str, torch.Tensor]) -> Path:
    from tunesmith.models.gguf_export import export_gguf, hf_tokenizer_vocab
    from tunesmith.models.spec import ModelSpec

    hf_config = getattr(checkpointer, "hf_config", None)
    if hf_config is not None:
        from tunesmith.models.convert_weights import spec_from_hf_config

        spec: ModelSpec = spec_from_hf_config(hf_config)
    else:
        from tunesmith.models._specs import get_spec

        name = str(cfg.model.get("_component_", "")).rsplit(".", 1)[-1]
        try:
            spec = get_spec(name)
        except (KeyError, ValueError):
            raise ValueError(
                f"model._component_={cfg.model.get('_component_')}: cannot tell the model's "
                "architecture for GGUF export; use a Hugging Face checkpoint (config.json) or a "
                "named builder such as tunesmith.models.llama3_2.llama3_2_1b"
            ) from None
    tok_dir = cfg.get("tokenizer_dir") or cfg.checkpointer.get("checkpoint_dir")
    if not tok_dir or not any(
        (Path(tok_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer.model")
    ):
        raise ValueError(
            f"tokenizer_dir={tok_dir!r} has no tokenizer.json or tokenizer.model; set "
            "tokenizer_dir to the folder with the model's Hugging Face tokenizer files (GGUF "
            "embeds the vocabulary)"
        )
    vocab = hf_tokenizer_vocab(tok_dir, spec.vocab_size, hf_config)
    out_type = str(cfg.get("gguf_type", "q8_0")).lower()
    out = Path(cfg.output_dir) / f"model-{out_type}.gguf"
    name = Path(str(cfg.checkpointer.get("checkpoint_dir", "model"))).name
    return export_gguf(out, state, spec, vocab, out_type=out_type, name=name)


def _gguf_arch_preflight(cfg: DictConfig) -> None:
    """Refuse, before any weights are read, a Hugging Face checkpoint whose architecture the
    GGUF export cannot write (the checkpoint folder's ``config.json``; others are checked at
    export)."""
    import json

    ckpt_dir = (cfg.get("checkpointer") or {}).get("checkpoint_dir")
    config = Path(str(ckpt_dir)) / "config.json" if ckpt_dir else None
    if config is None or not config.is_file():
        return
    from tunesmith.models._gguf_arch import gguf_arch
    from tunesmith.models.convert_weights import spec_from_hf_config

    try:
        gguf_arch(spec_from_hf_config(json.loads(config.read_text())))
    except ValueError as e:
        raise ConfigError(f"output_format=gguf: {e}", key="output_format") from None


def _quantizer(cfg: DictConfig) -> tuple[Any, str]:
    """``(quantizer, mode)`` from ``cfg.quantizer``, checked before any weights are read."""
    if cfg.get("quantizer") is None:
        raise ConfigError(
            "quantizer is not set: e.g. {_component_: tunesmith.quantization."
            "Int8DynActInt4WeightQuantizer, groupsize: 256}",
            key="quantizer",
        )
    from tunesmith.quantization import get_quantizer_mode

    quantizer = instantiate(cfg.quantizer)
    mode = get_quantizer_mode(quantizer)
    if mode is None:
        raise ConfigError(
            f"quantizer._component_={cfg.quantizer.get('_component_')} is not a tunesmith "
            "quantizer; use one from tunesmith.quantization",
            key="quantizer._component_",
        )
    return quantizer, mode


def _preflight(cfg: DictConfig, names: list[str]) -> None:
    """Refuse to replace an earlier output (unless ``overwrite=True``); check the folder can
    be written and holds about the float weights' size."""
    from tunesmith.training.checkpointing import base_checkpoint_bytes, preflight_files

    need = base_checkpoint_bytes(cfg.checkpointer) if cfg.get("checkpointer") else 0
    preflight_files(
        cfg.output_dir,
        names,
        overwrite=bool(cfg.get("overwrite", False)),
        need_bytes=need // 2,  # a quantized copy is at most about half the float weights
    )


def recipe_main(cfg: DictConfig) -> None:
    """Quantize ``cfg.model`` with ``cfg.quantizer`` and save it (or export GGUF)."""
    device = get_device(cfg.get("device"))
    dtype = get_dtype(cfg.get("dtype"), device)
    log_runtime(device, 0)
    set_seed(cfg.get("seed"))
    output_format = str(cfg.get("output_format", "torchao")).lower()
    if output_format not in ("torchao", "gguf"):
        raise ConfigError(
            f"output_format={output_format!r} is not a format: choose torchao or gguf",
            key="output_format",
        )
    if cfg.get("output_dir") is None:
        raise ConfigError(
            "output_dir is not set: name the folder the quantized model is written to",
            key="output_dir",
        )
    if output_format == "gguf":
        from tunesmith.models.gguf_export import GGUF_TYPES

        quantizer, mode = None, ""
        gguf_type = str(cfg.get("gguf_type", "q8_0")).lower()
        if gguf_type not in GGUF_TYPES:
            raise ConfigError(
                f"gguf_type={gguf_type!r} is not a GGUF type the export writes: choose one of "
                f"{', '.join(GGUF_TYPES)} (k-quants: export f16, then llama.cpp's quantizer)",
                key="gguf_type",
            )
        names = [f"model-{gguf_type}.gguf"]
        _gguf_arch_preflight(cfg)
    else:
        quantizer, mode = _quantizer(cfg)
        names = [f"model-{mode}.pt", "quantization.json"]
    _preflight(cfg, names)  # before any weights are read
    model, checkpointer, state = _load_float_model(cfg, device, dtype)

    if output_format == "gguf":
        path = _export_gguf(cfg, checkpointer, state)
        log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
        return

    del state
    from tunesmith.quantization import save_quantized

    start = time.perf_counter()
    model = quantizer.quantize(model)
    log.info(
        "quantized with %s (%s) in %.1f s",
        type(quantizer).__name__,
        mode,
        time.perf_counter() - start,
    )
    quantizer_node = OmegaConf.to_container(cfg.quantizer, resolve=True)
    assert isinstance(quantizer_node, dict)
    path = save_quantized(
        model,
        cfg.output_dir,
        mode=mode,
        quantizer_config=quantizer_node,
        model_config=self_contained_model_config(cfg, checkpointer),
        dtype=dtype,
    )
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)


if __name__ == "__main__":  # python quantize.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "quantize"))
