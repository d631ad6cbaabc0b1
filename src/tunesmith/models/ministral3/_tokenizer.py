"""Ministral 3 tokenizer: the Tekken ``tokenizer.json`` + the checkpoint's chat template."""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

ministral3_tokenizer = hf_chat_tokenizer_builder("ministral3_tokenizer", "Ministral 3", __name__)

__all__ = ["ministral3_tokenizer"]
