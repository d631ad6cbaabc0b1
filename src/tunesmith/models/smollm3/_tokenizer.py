"""SmolLM3 tokenizer: ``tokenizer.json`` + the checkpoint's chat template."""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

smollm3_tokenizer = hf_chat_tokenizer_builder("smollm3_tokenizer", "SmolLM3", __name__)

__all__ = ["smollm3_tokenizer"]
