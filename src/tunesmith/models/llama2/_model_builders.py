"""Llama 2 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

llama2_7b = model_builder("llama2_7b", __name__)
lora_llama2_7b = lora_model_builder("llama2_7b", __name__)
qlora_llama2_7b = lora_model_builder("llama2_7b", __name__, quantize_base=True, prefix="qlora")
llama2_13b = model_builder("llama2_13b", __name__)
lora_llama2_13b = lora_model_builder("llama2_13b", __name__)
qlora_llama2_13b = lora_model_builder("llama2_13b", __name__, quantize_base=True, prefix="qlora")
llama2_70b = model_builder("llama2_70b", __name__)
lora_llama2_70b = lora_model_builder("llama2_70b", __name__)
qlora_llama2_70b = lora_model_builder("llama2_70b", __name__, quantize_base=True, prefix="qlora")
llama2_reward_7b = model_builder("llama2_reward_7b", __name__)
lora_llama2_reward_7b = lora_model_builder("llama2_reward_7b", __name__)
qlora_llama2_reward_7b = lora_model_builder(
    "llama2_reward_7b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "llama2_7b",
    "lora_llama2_7b",
    "qlora_llama2_7b",
    "llama2_13b",
    "lora_llama2_13b",
    "qlora_llama2_13b",
    "llama2_70b",
    "lora_llama2_70b",
    "qlora_llama2_70b",
    "llama2_reward_7b",
    "lora_llama2_reward_7b",
    "qlora_llama2_reward_7b",
]
