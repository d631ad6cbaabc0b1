"""Qwen3 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

qwen3_0_6b_base = model_builder("qwen3_0_6b_base", __name__)
lora_qwen3_0_6b_base = lora_model_builder("qwen3_0_6b_base", __name__)
qwen3_0_6b_instruct = model_builder("qwen3_0_6b_instruct", __name__)
lora_qwen3_0_6b_instruct = lora_model_builder("qwen3_0_6b_instruct", __name__)
qwen3_1_7b_base = model_builder("qwen3_1_7b_base", __name__)
lora_qwen3_1_7b_base = lora_model_builder("qwen3_1_7b_base", __name__)
qwen3_1_7b_instruct = model_builder("qwen3_1_7b_instruct", __name__)
lora_qwen3_1_7b_instruct = lora_model_builder("qwen3_1_7b_instruct", __name__)
qwen3_4b_base = model_builder("qwen3_4b_base", __name__)
lora_qwen3_4b_base = lora_model_builder("qwen3_4b_base", __name__)
qwen3_4b_instruct = model_builder("qwen3_4b_instruct", __name__)
lora_qwen3_4b_instruct = lora_model_builder("qwen3_4b_instruct", __name__)
qwen3_8b_base = model_builder("qwen3_8b_base", __name__)
lora_qwen3_8b_base = lora_model_builder("qwen3_8b_base", __name__)
qwen3_8b_instruct = model_builder("qwen3_8b_instruct", __name__)
lora_qwen3_8b_instruct = lora_model_builder("qwen3_8b_instruct", __name__)
qwen3_14b_base = model_builder("qwen3_14b_base", __name__)
lora_qwen3_14b_base = lora_model_builder("qwen3_14b_base", __name__)
qwen3_14b_instruct = model_builder("qwen3_14b_instruct", __name__)
lora_qwen3_14b_instruct = lora_model_builder("qwen3_14b_instruct", __name__)
qwen3_32b = model_builder("qwen3_32b", __name__)
lora_qwen3_32b = lora_model_builder("qwen3_32b", __name__)

__all__ = [
    "qwen3_0_6b_base",
    "lora_qwen3_0_6b_base",
    "qwen3_0_6b_instruct",
    "lora_qwen3_0_6b_instruct",
    "qwen3_1_7b_base",
    "lora_qwen3_1_7b_base",
    "qwen3_1_7b_instruct",
    "lora_qwen3_1_7b_instruct",
    "qwen3_4b_base",
    "lora_qwen3_4b_base",
    "qwen3_4b_instruct",
    "lora_qwen3_4b_instruct",
    "qwen3_8b_base",
    "lora_qwen3_8b_base",
    "qwen3_8b_instruct",
    "lora_qwen3_8b_instruct",
    "qwen3_14b_base",
    "lora_qwen3_14b_base",
    "qwen3_14b_instruct",
    "lora_qwen3_14b_instruct",
    "qwen3_32b",
    "lora_qwen3_32b",
]
