"""Granite 4.0 dense model builders (granite-4.0-micro / -1b / -350m: attention in every
layer); sizes live in ``tunesmith.models._dense_specs``. The hybrid Mamba-2 models
(granite-4.0-h-*) have no builder: ``build_from_hf`` refuses them in one line."""

from tunesmith.models.builder import lora_model_builder, model_builder

granite4_micro = model_builder("granite4_micro", __name__)
lora_granite4_micro = lora_model_builder("granite4_micro", __name__)
qlora_granite4_micro = lora_model_builder(
    "granite4_micro", __name__, quantize_base=True, prefix="qlora"
)
granite4_1b = model_builder("granite4_1b", __name__)
lora_granite4_1b = lora_model_builder("granite4_1b", __name__)
granite4_350m = model_builder("granite4_350m", __name__)
lora_granite4_350m = lora_model_builder("granite4_350m", __name__)

__all__ = [
    "granite4_micro",
    "lora_granite4_micro",
    "qlora_granite4_micro",
    "granite4_1b",
    "lora_granite4_1b",
    "granite4_350m",
    "lora_granite4_350m",
]
