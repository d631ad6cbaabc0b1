"""Ministral 3 model builders with torchtune-style names; sizes live in
``tunesmith.models._dense_specs`` (the text decoders of the 2512 releases)."""

from tunesmith.models.builder import lora_model_builder, model_builder

ministral3_3b = model_builder("ministral3_3b", __name__)
lora_ministral3_3b = lora_model_builder("ministral3_3b", __name__)
qlora_ministral3_3b = lora_model_builder(
    "ministral3_3b", __name__, quantize_base=True, prefix="qlora"
)
ministral3_8b = model_builder("ministral3_8b", __name__)
lora_ministral3_8b = lora_model_builder("ministral3_8b", __name__)
qlora_ministral3_8b = lora_model_builder(
    "ministral3_8b", __name__, quantize_base=True, prefix="qlora"
)
ministral3_14b = model_builder("ministral3_14b", __name__)
lora_ministral3_14b = lora_model_builder("ministral3_14b", __name__)
qlora_ministral3_14b = lora_model_builder(
    "ministral3_14b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "ministral3_3b",
    "lora_ministral3_3b",
    "qlora_ministral3_3b",
    "ministral3_8b",
    "lora_ministral3_8b",
    "qlora_ministral3_8b",
    "ministral3_14b",
    "lora_ministral3_14b",
    "qlora_ministral3_14b",
]
