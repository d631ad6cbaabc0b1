"""The model sections of torchtune's own YAML configs build unchanged (on the meta device)."""

from __future__ import annotations

import torch

from tunesmith.modules import TransformerDecoder


def test_torchtune_model_sections_build(assets):
    from omegaconf import OmegaConf

    from tunesmith.config import instantiate

    files = sorted((assets / "torchtune_configs_sample").rglob("*.yaml"))
    assert files, "no torchtune configs found in the shared assets"
    built = 0
    for path in files:
        cfg = OmegaConf.load(path)
        if "model" not in cfg:
            continue
        with torch.device("meta"):
            model = instantiate(cfg.model)
        assert isinstance(model, TransformerDecoder), path
        lora_modules = list(cfg.model.get("lora_attn_modules") or [])
        for name in lora_modules:
            layer = getattr(model.layers[0].attn, name)
            assert hasattr(layer, "lora_a"), f"{path.name}: {name} has no LoRA adapter"
        if cfg.model.get("apply_lora_to_mlp"):
            assert hasattr(model.layers[0].mlp.w1, "lora_a"), path.name
        built += 1
    assert built >= 10
