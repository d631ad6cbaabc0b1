"""Mistral model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

mistral_7b = model_builder("mistral_7b", __name__)
lora_mistral_7b = lora_model_builder("mistral_7b", __name__)
qlora_mistral_7b = lora_model_builder("mistral_7b", __name__, quantize_base=True, prefix="qlora")
mistral_reward_7b = model_builder("mistral_reward_7b", __name__)
lora_mistral_reward_7b = lora_model_builder("mistral_reward_7b", __name__)
qlora_mistral_reward_7b = lora_model_builder(
    "mistral_reward_7b", __name__, quantize_base=True, prefix="qlora"
)

mistral_nemo_12b = model_builder("mistral_nemo_12b", __name__)
lora_mistral_nemo_12b = lora_model_builder("mistral_nemo_12b", __name__)
qlora_mistral_nemo_12b = lora_model_builder(
    "mistral_nemo_12b", __name__, quantize_base=True, prefix="qlora"
)
mistral_small_24b = model_builder("mistral_small_24b", __name__)
lora_mistral_small_24b = lora_model_builder("mistral_small_24b", __name__)
qlora_mistral_small_24b = lora_model_builder(
    "mistral_small_24b", __name__, quantize_base=True, prefix="qlora"
)
mistral_small_3_1_24b = model_builder("mistral_small_3_1_24b", __name__)
lora_mistral_small_3_1_24b = lora_model_builder("mistral_small_3_1_24b", __name__)
qlora_mistral_small_3_1_24b = lora_model_builder(
    "mistral_small_3_1_24b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "mistral_nemo_12b",
    "lora_mistral_nemo_12b",
    "qlora_mistral_nemo_12b",
    "mistral_small_24b",
    "lora_mistral_small_24b",
    "qlora_mistral_small_24b",
    "mistral_small_3_1_24b",
    "lora_mistral_small_3_1_24b",
    "qlora_mistral_small_3_1_24b",
    "mistral_7b",
    "lora_mistral_7b",
    "qlora_mistral_7b",
    "mistral_reward_7b",
    "lora_mistral_reward_7b",
    "qlora_mistral_reward_7b",
]
