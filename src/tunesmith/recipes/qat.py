"""Recipe ``qat``: quantization-aware finetuning (full or LoRA), one device or many.

The finetune recipe's loop runs unchanged on a model whose linear layers fake-quantize
their inputs and weights the way the target PTQ scheme will (torchao QAT ``prepare``);
LoRA layers fake-quantize their merged weight. Checkpoints hold ordinary float weights (the
fake quantizers have no state), saved in the input's format like any finetune. Quantize the
result for deployment with the ``quantize`` recipe and the same QAT quantizer, which runs
``prepare`` + ``convert`` and so computes what training saw.

Config keys: the finetune recipe's, plus (torchtune's names)::

    quantizer                   e.g. {_component_: tunesmith.quantization.
                                Int8DynActInt4WeightQATQuantizer, groupsize: 256}
                                (torchtune.training.quantization.* names work too)
    fake_quant_after_n_steps    train in floating point this many steps first (optional)

torchtune's ``qat_single_device``, ``qat_distributed``, ``qat_lora_finetune_*`` are aliases.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tunesmith.config import ConfigError
from tunesmith.recipes import finetune

__all__ = ["qat_config", "recipe_main"]


def qat_config(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose ``model`` builds the QAT-prepared model.

    ``model._component_`` becomes :func:`tunesmith.quantization.qat_model`, the original
    builder moves to ``model.base_component``, and ``quantizer`` /
    ``fake_quant_after_n_steps`` are passed along; the builder's own keys stay in place (the
    finetune recipe reads ``model.lora_rank`` etc. for the adapter config).
    """
    if cfg.get("quantizer") is None:
        raise ConfigError(
            "quantizer: the qat recipe needs a QAT quantizer, e.g. quantizer: {_component_: "
            "tunesmith.quantization.Int8DynActInt4WeightQATQuantizer, groupsize: 256}",
            key="quantizer",
        )
    if cfg.get("model") is None or "_component_" not in cfg.model:
        raise ConfigError("model: needs a _component_ (the model builder)", key="model")
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    assert isinstance(out, DictConfig)
    model = OmegaConf.to_container(out.model, resolve=False)
    assert isinstance(model, dict)
    clash = {"base_component", "quantizer", "fake_quant_after_n_steps"} & set(model)
    if clash:
        raise ConfigError(f"model: unexpected key(s) {sorted(clash)}", key="model")
    base = model.pop("_component_")
    qat_node = {
        "_component_": "tunesmith.quantization.qat_model",
        "base_component": base,
        "quantizer": "${quantizer}",
        "fake_quant_after_n_steps": cfg.get("fake_quant_after_n_steps"),
        "gradient_accumulation_steps": int(cfg.get("gradient_accumulation_steps", 1)),
        **model,
    }
    out.model = qat_node
    return out


def recipe_main(cfg: DictConfig) -> None:
    """Finetune ``cfg.model`` with fake quantization from ``cfg.quantizer``."""
    finetune.recipe_main(qat_config(cfg))


if __name__ == "__main__":  # python qat.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "qat"))
