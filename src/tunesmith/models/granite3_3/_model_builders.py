"""Granite 3.3 model builders with torchtune-style names; sizes live in ``tunesmith.models._dense_specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

granite3_3_2b = model_builder("granite3_3_2b", __name__)
lora_granite3_3_2b = lora_model_builder("granite3_3_2b", __name__)
qlora_granite3_3_2b = lora_model_builder(
    "granite3_3_2b", __name__, quantize_base=True, prefix="qlora"
)
granite3_3_8b = model_builder("granite3_3_8b", __name__)
lora_granite3_3_8b = lora_model_builder("granite3_3_8b", __name__)
qlora_granite3_3_8b = lora_model_builder(
    "granite3_3_8b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "granite3_3_2b",
    "lora_granite3_3_2b",
    "qlora_granite3_3_2b",
    "granite3_3_8b",
    "lora_granite3_3_8b",
    "qlora_granite3_3_8b",
]
