"""Gemma 3 tokenizer: ``tokenizer.json`` + the checkpoint's chat template."""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

gemma3_tokenizer = hf_chat_tokenizer_builder("gemma3_tokenizer", "Gemma 3", __name__)

__all__ = ["gemma3_tokenizer"]
