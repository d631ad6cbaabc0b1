"""Granite 4.0 tokenizer: ``tokenizer.json`` + the checkpoint's chat template."""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

granite4_tokenizer = hf_chat_tokenizer_builder("granite4_tokenizer", "Granite 4.0", __name__)

__all__ = ["granite4_tokenizer"]
