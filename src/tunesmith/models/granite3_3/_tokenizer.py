"""Granite 3.3 tokenizer: ``tokenizer.json`` + the checkpoint's chat template."""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

granite3_3_tokenizer = hf_chat_tokenizer_builder("granite3_3_tokenizer", "Granite 3.3", __name__)

__all__ = ["granite3_3_tokenizer"]
