"""SmolLM2 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

smollm2_135m = model_builder("smollm2_135m", __name__)
lora_smollm2_135m = lora_model_builder("smollm2_135m", __name__)
smollm2_360m = model_builder("smollm2_360m", __name__)
lora_smollm2_360m = lora_model_builder("smollm2_360m", __name__)
smollm2_1_7b = model_builder("smollm2_1_7b", __name__)
lora_smollm2_1_7b = lora_model_builder("smollm2_1_7b", __name__)

__all__ = [
    "smollm2_135m",
    "lora_smollm2_135m",
    "smollm2_360m",
    "lora_smollm2_360m",
    "smollm2_1_7b",
    "lora_smollm2_1_7b",
]
